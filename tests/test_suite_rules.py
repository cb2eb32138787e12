"""Rules the test suite itself keeps: no test passes or fails on how fast this machine is.

Wall time depends on the machine kind (AVX2 or AVX-512) and its load, so an assertion that
compares a measured duration with a bound decides a test by the machine, not by the code.
Budgets are reported (dslib.jobs.budgets); hangs are caught with pytest-timeout.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
TIMING_CALLS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time"}
# names that hold a duration or a rate measured on this machine
TIMING_NAME = re.compile(r"(^|_)(wall|elapsed|seconds|duration|step_times?|step_s|ms|per_s|budget|speed)(_|$)",
                         re.IGNORECASE)
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _mentions_timing(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in TIMING_CALLS:
                return True
        name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else None
        if name and TIMING_NAME.search(name):
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and re.fullmatch(r"\w+", sub.value) \
                and TIMING_NAME.search(sub.value):
            return True  # record["wall_s"]
    return False


def _is_zero(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0


def timing_assertions(source: str) -> list[int]:
    """Line numbers of asserts that order a measured duration against a bound (a sign check
    against 0, e.g. ``step_s > 0``, is not machine-dependent and is allowed)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert):
            continue
        for compare in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
            operands = [compare.left, *compare.comparators]
            for op, left, right in zip(compare.ops, operands, operands[1:]):
                if isinstance(op, ORDERING) and (_mentions_timing(left) or _mentions_timing(right)) \
                        and not (_is_zero(left) or _is_zero(right)):
                    lines.append(node.lineno)
    return sorted(set(lines))


def test_the_checker_finds_timing_assertions():
    flagged = """
import time
start = time.perf_counter()
assert time.perf_counter() - start < 5
assert result.wall_s < SMOKE_BUDGET_S
assert 40 > elapsed
assert record["wall_s"] <= 90
"""
    allowed = """
assert all(t > 0 for t in run.step_s)
assert c.wall_s == sorted(c.wall_s)
assert seconds == pytest.approx(1e12 / 8)
assert losses[-1] < losses[0]
"""
    assert timing_assertions(flagged) == [4, 5, 6, 7]
    assert timing_assertions(allowed) == []


def test_no_test_asserts_on_wall_clock_time():
    found = {path.name: lines for path in sorted(TESTS.glob("**/*.py"))
             if path.name != Path(__file__).name and (lines := timing_assertions(path.read_text()))}
    assert not found, f"wall-clock pass/fail assertions (report timings instead): {found}"
