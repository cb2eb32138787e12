"""The house's layers hold: a module imports only its own package or packages of lower layers,
no two modules import each other in a circle, and the library never imports a chapter study.

Every import counts, at module level or inside a function (a function-level import still
ties the layers; it only hides the tie from a reader).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "dslib"

# lowest first; a package may import only packages of strictly lower layers (and itself)
LAYERS: list[set[str]] = [
    {"env", "configs", "io", "units", "viz", "progress"},  # base helpers
    {"data", "model"},
    {"plan", "optim"},
    {"dist"},       # processes: launcher, worker, ports, DeepSpeed ops and config
    {"train"},      # the one step, the trainer, checkpoints, precision
    {"tune"},       # activation checkpointing, sharing, PowerSGD
    {"parallel"},   # grid, tensor, sequence, pipeline, expert, ZeRO
    {"eval"},
    {"claims"},
    {"jobs"},
    {"studies"},    # what only a chapter uses
    {"cli", "__main__"},
]
LAYER_OF = {package: i for i, layer in enumerate(LAYERS) for package in layer}
LAYER_OF[""] = 0  # dslib/__init__.py: the package itself, which sets the offline environment
# within the base helpers and within the entry points, modules import each other freely (no circles)
OPEN_LAYERS = {0, len(LAYERS) - 1}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """'dslib.train.step' -> 'train'; a top-level module 'dslib.env' is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def dslib_imports(path: Path, module: str) -> set[str]:
    """Every dslib module ``path`` imports, anywhere in the file (``from dslib.x import y``
    counts as dslib.x.y when that is a module, else dslib.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dslib"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "dslib":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name != module}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the dslib modules it imports (names that are not modules, e.g. functions, dropped)."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: {i for i in dslib_imports(p, m) if i in paths} for m, p in paths.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, imported in sorted(graph.items()):
        mine = package_of(module)
        for other in sorted(imported):
            theirs = package_of(other)
            if mine not in LAYER_OF or theirs not in LAYER_OF:
                out.append(f"{module} -> {other}: package not in the layer table")
            elif mine == theirs or LAYER_OF[mine] == LAYER_OF[theirs] in OPEN_LAYERS:
                continue
            elif LAYER_OF[theirs] >= LAYER_OF[mine]:
                out.append(f"{module} (layer {LAYER_OF[mine]}) -> {other} (layer {LAYER_OF[theirs]})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (package __init__ re-exports excluded: they import their
    own modules by design, and a module importing its package's public name goes through them)."""
    edges = {m: {i for i in imported if not (graph.get(i) is not None and m.startswith(i + "."))}
             for m, imported in graph.items()}
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    assert not layer_violations(graph), "\n".join(layer_violations(graph))


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


@pytest.fixture
def synthetic_tree(tmp_path):
    """A small dslib-shaped tree: a library module that imports a study, and a circle."""
    root = tmp_path / "dslib"
    for package in ("train", "studies", "data"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "train" / "trainer.py").write_text("def f():\n    from dslib.studies.lion import sweep\n")
    (root / "studies" / "lion.py").write_text("from dslib.train import trainer\n")
    (root / "data" / "a.py").write_text("from dslib.data import b\n")
    (root / "data" / "b.py").write_text("import dslib.data.a\n")
    return root


def test_the_checks_find_an_upward_import_and_a_circle(synthetic_tree):
    graph = import_graph(synthetic_tree)
    assert layer_violations(graph) == ["dslib.train.trainer (layer 4) -> dslib.studies.lion (layer 10)"]
    assert ["dslib.data.a", "dslib.data.b", "dslib.data.a"] in cycles(graph)


def test_importing_the_library_only_sets_documented_environment_defaults(tmp_path):
    """Import every library package in a fresh interpreter: the environment changes only by the
    defaults dslib.env.set_offline documents, nothing is patched into sys.modules, and no
    folder is created."""
    import json
    import os
    import subprocess
    import sys

    from dslib.env import OFFLINE_VARS, python_path

    probe = """
import json, os, sys
before = dict(os.environ)
import dslib.data, dslib.model, dslib.plan, dslib.optim, dslib.dist, dslib.train, dslib.tune
import dslib.parallel, dslib.eval, dslib.claims, dslib.jobs
import dslib.eval.registry, dslib.dist.ops, dslib.train.step
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"changed": changed, "none_modules": sorted(k for k, v in sys.modules.items() if v is None)}))
"""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    env.update(PYTHONPATH=python_path(), DSLIB_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    documented = set(OFFLINE_VARS) | {"OMP_WAIT_POLICY", "KINETO_LOG_LEVEL", "TORCH_EXTENSIONS_DIR",
                                      "HF_HUB_DISABLE_PROGRESS_BARS"}
    assert set(found["changed"]) <= documented, found["changed"]
    assert found["none_modules"] == []
    assert not (tmp_path / "cache").exists()


def test_every_package_curates_its_public_names():
    """Each package says what it offers (``__all__``), and every name there exists: a name
    the package defines or re-exports, or one of its modules."""
    import importlib

    for init in sorted(ROOT.glob("*/__init__.py")):
        if init.parent.name == "metrics" or init.parent.parent.name == "metrics":
            continue
        package = importlib.import_module(f"dslib.{init.parent.name}")
        assert hasattr(package, "__all__"), f"dslib.{init.parent.name} has no __all__"
        for name in package.__all__:
            if not hasattr(package, name):
                importlib.import_module(f"dslib.{init.parent.name}.{name}")


if __name__ == "__main__":  # python tests/test_layers.py: the package-level import graph, layer by layer
    edges: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        mine = package_of(module) or "dslib"
        edges.setdefault(mine, set()).update(package_of(i) or "dslib" for i in imported if package_of(i) != mine)
    for i, layer in enumerate(LAYERS):
        for package in sorted(layer):
            if package in edges:
                print(f"layer {i:2d}  {package:10s} -> {', '.join(sorted(edges[package] - {'dslib'})) or '-'}")
