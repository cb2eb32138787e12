"""The claims engine: verdicts follow the evidence, for every claim of configs/claims.yaml;
the recorder takes numbers only; no verdict is typed anywhere outside dslib/claims/."""
import ast
import json
from pathlib import Path

import pytest
import yaml

from dslib import claims, jobs
from dslib.claims.definitions import CLAIMS_FILE
from dslib.claims.engine import DOES_NOT_HOLD, HOLDS, HOLDS_ONLY_WHEN, NOT_ENOUGH
from dslib.env import REPO_ROOT
from dslib.jobs import report

CLAIMS = claims.load_claims()


def meeting_value(q: claims.Quantity) -> float:
    """A number that meets the quantity's comparison, written from the YAML's words, not the engine."""
    if q.compare == "between":
        return (q.low + q.high) / 2
    if q.compare == "within":
        return q.value * (1 + q.tolerance / 2)
    if q.compare == "at_least":
        return q.value * 1.5 if q.value > 0 else q.value + 1
    return q.value / 2 if q.value > 0 else q.value - 1


def missing_value(q: claims.Quantity) -> float:
    if q.compare == "between":
        return q.high + (q.high - q.low)
    if q.compare == "within":
        return q.value * (1 + 3 * q.tolerance)
    if q.compare == "at_least":
        return q.value * 0.5 if q.value > 0 else q.value - 1
    return q.value * 2 if q.value > 0 else q.value + 1


def row(claim, values, origin="full", seeds=None, kind="measured", default=True, **conditions):
    return claims.Evidence(claim.id, values, conditions=conditions, kind=kind, default=default,
                           seeds=claim.evidence.seeds if seeds is None else seeds, origin=origin,
                           chapter="99_test", profile="smoke" if origin == "smoke" else "cpu")


def meets(claim):
    return {q.name: meeting_value(q) for q in claim.quantities}


def misses(claim, which=0):
    """Every quantity meets but one: a row must fail if any of its quantities does."""
    values = meets(claim)
    values[claim.quantities[which].name] = missing_value(claim.quantities[which])
    return values


@pytest.mark.parametrize("claim", CLAIMS.values(), ids=list(CLAIMS))
def test_evidence_that_meets_the_claim_holds(claim):
    decision = claims.decide(claim, [row(claim, meets(claim), setting=1)])
    if claim.stated_conditions:
        assert decision.verdict == HOLDS, decision
    else:  # an unstated setting: never a plain "holds", the tested range is named
        assert decision.verdict == HOLDS_ONLY_WHEN and decision.when == "setting = 1", decision
        assert "states no setting" in decision.reason


@pytest.mark.parametrize("claim", CLAIMS.values(), ids=list(CLAIMS))
def test_evidence_that_misses_any_quantity_does_not_hold(claim):
    for which in range(len(claim.quantities)):
        decision = claims.decide(claim, [row(claim, misses(claim, which))])
        assert decision.verdict == DOES_NOT_HOLD, (which, decision)
        assert claim.quantities[which].name in decision.reason


@pytest.mark.parametrize("claim", CLAIMS.values(), ids=list(CLAIMS))
def test_mixed_evidence_holds_only_when_naming_the_conditions(claim):
    rows = [row(claim, meets(claim) if b >= 16 else misses(claim), micro_batch=b, model="m")
            for b in (1, 4, 8, 16, 32)]
    decision = claims.decide(claim, rows)
    assert decision.verdict == HOLDS_ONLY_WHEN and decision.when == "micro_batch >= 16", decision
    assert "2 of 5 settings (40%)" in decision.reason and "not when micro_batch <= 8" in decision.reason
    assert decision.status == ("misses", "misses", "misses", "meets", "meets")


@pytest.mark.parametrize("claim", CLAIMS.values(), ids=list(CLAIMS))
def test_weak_evidence_is_not_enough(claim):
    for origin in ("smoke", "interactive", "failed", "unfinished"):
        decision = claims.decide(claim, [row(claim, meets(claim), origin=origin)])
        assert decision.verdict == NOT_ENOUGH, (origin, decision)
    if claim.evidence.seeds > 1:
        decision = claims.decide(claim, [row(claim, meets(claim), seeds=claim.evidence.seeds - 1)])
        assert decision.verdict == NOT_ENOUGH and "seeds" in decision.reason
    modelled = claims.decide(claim, [row(claim, meets(claim), kind="modelled")])
    if claim.evidence.modelled_decides:
        assert modelled.verdict != NOT_ENOUGH
    else:
        assert modelled.verdict == NOT_ENOUGH and "modelled" in modelled.reason


def test_a_missing_default_row_or_a_contradiction_stops_holds():
    claim = CLAIMS["memory_lowers_perplexity"]
    assert claim.stated_conditions
    assert claims.decide(claim, [row(claim, meets(claim), default=False)]).verdict == HOLDS_ONLY_WHEN
    mixed = claims.decide(claim, [row(claim, meets(claim), domain="kjv"), row(claim, misses(claim), domain="hpo")])
    assert mixed.verdict == HOLDS_ONLY_WHEN and mixed.when == "domain = kjv" and "not when domain = hpo" in mixed.reason
    # smoke rows that contradict do not count
    smoke = row(claim, misses(claim), origin="smoke", domain="hpo")
    assert claims.decide(claim, [row(claim, meets(claim), domain="kjv"), smoke]).verdict == HOLDS


def test_condition_names_from_the_values():
    describe = claims.describe_conditions
    assert describe([{"k": 2}, {"k": 4}], [{"k": 1}, {"k": 8}]) == ("2 <= k <= 4", "k in {1, 8}")
    assert describe([{"k": 1}, {"k": 4}], [{"k": 2}]) == ("k in {1, 4}", "k = 2")
    assert describe([{"p": "fp16", "b": 8}], [{"p": "bf16", "b": 8}]) == ("p = fp16", "p = bf16")
    # no single key separates the rows: an interaction of both
    when, _ = describe([{"a": 1, "b": 2}, {"a": 2, "b": 1}], [{"a": 1, "b": 1}, {"a": 2, "b": 2}])
    assert when == "in 2 combinations of a, b"
    assert describe([{"k": None}], [{"k": 4}]) == ("k = none", "k = 4")


def test_the_claims_file_is_checked_naming_the_claim_and_field():
    data = yaml.safe_load(CLAIMS_FILE.read_text())
    assert claims.parse_claims(data).keys() == CLAIMS.keys()
    broken = json.loads(json.dumps(data))
    del broken["claims"]["gate_skips_30_50"]["quantities"][0]["low"]
    with pytest.raises(ValueError, match=r"gate_skips_30_50\.quantities\.0.*between"):
        claims.parse_claims(broken)
    broken = json.loads(json.dumps(data))
    broken["claims"]["powersgd_1_16"]["evidence"]["seeds"] = 0
    with pytest.raises(ValueError, match=r"powersgd_1_16\.evidence\.seeds"):
        claims.parse_claims(broken)
    broken["claims"]["powersgd_1_16"] = {**data["claims"]["powersgd_1_16"], "verdict": "holds"}
    with pytest.raises(ValueError, match=r"powersgd_1_16\.verdict"):
        claims.parse_claims(broken)


def test_the_recorder_takes_numbers_and_known_claims_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DSLIB_RUN_DIR", str(tmp_path))
    run = jobs.start("x")
    with pytest.raises(KeyError, match="unknown claim id 'nope'"):
        run.evidence("nope", 1.0)
    with pytest.raises(TypeError, match="must be a number"):
        run.evidence("lion_1_8x_faster", "1.8x")
    with pytest.raises(ValueError, match="finite"):
        run.evidence("lion_1_8x_faster", float("nan"))
    with pytest.raises(ValueError, match="quantities"):
        run.evidence("powersgd_1_16", 16.0)  # two quantities: a dict is needed
    with pytest.raises(ValueError, match="exactly the quantities"):
        run.evidence("powersgd_1_16", {"compression": 16.0})
    with pytest.raises(ValueError, match="unit"):
        run.evidence("lion_1_8x_faster", 1.8, unit="s")
    assert not hasattr(run, "claim")  # no verdict can be typed
    run.evidence("powersgd_1_16", {"compression": 20, "loss_cost": 0.5}, conditions={"rank": 2})
    run.evidence("powersgd_1_16", {"compression": 20, "loss_cost": 0.01}, conditions={"rank": 2})  # replaces
    run.evidence("powersgd_1_16", {"compression": 9, "loss_cost": 0.0}, conditions={"rank": 4})
    stored = jobs.read_record(tmp_path)["evidence"]
    assert [(r["conditions"]["rank"], r["values"]["loss_cost"]) for r in stored] == [(2, 0.01), (4, 0.0)]
    (verdict,) = run.verdicts()  # a JupyterLab-like record (no runner section): previewed, marked
    assert verdict["claim"] == "powersgd_1_16" and verdict["verdict"] == f"{HOLDS_ONLY_WHEN} rank = 2"


def _record(folder: Path, stem: str, rows: list[dict], **run_info) -> Path:
    folder.mkdir(parents=True)
    record = {"stem": stem, "evidence": rows, **({"run": run_info} if run_info else {})}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def _lion_row(ratio: float) -> dict:
    return claims.make_evidence("lion_1_8x_faster", ratio, seeds=3, default=True).stored()


def test_latest_records_never_pass_smoke_or_lab_as_full(tmp_path):
    _record(tmp_path / "book" / "08", "08_lion_optimizer", [_lion_row(1.8)], status="ok", profile="cpu",
            started="2026-01-01T00:00:00")
    _record(tmp_path / "smoke" / "08", "08_lion_optimizer", [_lion_row(1.0)], status="ok", profile="smoke",
            started="2026-03-01T00:00:00")
    _record(tmp_path / "lab" / "08", "08_lion_optimizer", [_lion_row(1.0)])
    _record(tmp_path / "broken" / "08", "08_lion_optimizer", [_lion_row(1.0)], status="failed", profile="cpu",
            started="2026-04-01T00:00:00")
    _record(tmp_path / "lab" / "07", "07_mixed_precision", [])
    latest = report.latest_records(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in latest) == ["book/08", "lab/07"]


def test_the_ledger_merges_chapters_and_marks_what_cannot_decide(tmp_path):
    claim = CLAIMS["memory_lowers_perplexity"]
    ten = _record(tmp_path / "10", "10_evaluation", [
        claims.make_evidence(claim.id, 1.2, conditions={"domain": d}, default=True).stored() for d in ("kjv", "hpo")],
        status="ok", profile="cpu", git_commit="abc123", started="2026-01-01")
    eleven = _record(tmp_path / "11", "11_end_to_end", [
        claims.make_evidence(claim.id, 0.9, conditions={"domain": "shakespeare"}, default=True).stored()],
        status="ok", profile="smoke", started="2026-01-01")
    records = {d: jobs.read_record(d) for d in (ten, eleven)}
    text = report.claims_ledger(records)
    (summary,) = [line for line in text.splitlines() if line.startswith(f"| {claim.claim}")]
    assert "10_evaluation, 11_end_to_end" in summary and f"| {HOLDS} |" in summary  # the smoke row does not count
    assert text.count("| smoke run |") == 1 and text.count("| meets |") == 2 and "abc123" in text
    assert text.count("not yet checked") == len(CLAIMS) - 1
    records[eleven]["run"]["profile"] = "cpu"  # the same row from a full run contradicts
    assert f"{HOLDS_ONLY_WHEN} domain in {{hpo, kjv}}" in report.claims_ledger(records)


VERDICT_WORDS = {v.lower() for v in claims.VERDICTS}


def _verdict_literals(source: str) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.strip().lower() in VERDICT_WORDS]


def test_no_verdict_is_typed_outside_the_engine():
    found = {}
    for path in sorted((REPO_ROOT / "dslib").rglob("*.py")):
        if path.relative_to(REPO_ROOT / "dslib").parts[0] != "claims" and (hits := _verdict_literals(path.read_text())):
            found[str(path.relative_to(REPO_ROOT))] = hits
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code" and (hits := _verdict_literals("".join(cell["source"]))):
                found[f"{path.name} cell {i}"] = hits
    assert not found, f"verdicts typed outside dslib/claims/: {found}"
    assert _verdict_literals('x = f"{a}"; y = " Holds only when "') == [" Holds only when "]  # the check bites


def test_the_errata_table_of_the_tour_is_docs_errata():
    rows = [line for line in (REPO_ROOT / "docs" / "errata.md").read_text().splitlines() if line.startswith("| ")]
    tour = json.loads((REPO_ROOT / "notebooks" / "00_tour.ipynb").read_text())["cells"]
    shown = [line for c in tour if c["cell_type"] == "markdown" and "errors" in "".join(c["source"])
             for line in "".join(c["source"]).splitlines() if line.startswith("| ")]
    assert len(rows) == 7 and shown == rows  # header + the six errors
    chapters = {p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb")}
    assert all(line.rstrip(" |").rsplit("| ", 1)[-1] in chapters for line in rows[1:])


def test_the_engine_imports_only_the_base_helpers():
    """dslib.claims sits above eval and below the studies: dslib.env, dslib.configs and itself."""
    allowed = ("dslib.claims", "dslib.env", "dslib.configs")
    for path in (REPO_ROOT / "dslib" / "claims").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not name.startswith("dslib") or name.startswith(allowed), f"{path.name} imports {name}"
