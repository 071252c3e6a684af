"""The package's floors: each module imports only its own floor and those below it, without cycles.

geometry (1) ← io (2) ← sfm (3) ← plugin (4) ← workflows (5) ← cli (6); ``nerf_posefix.errors`` and the package's
``__init__`` are floor 0. Benchmarks sit on top and never import the CLI. Imports are read with ``ast``
(function-level imports included; imports under ``if TYPE_CHECKING:`` included too: a type may not point
upward either).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nerf_posefix"
FLOORS = {"errors": 0, "__init__": 0, "geometry": 1, "io": 2, "sfm": 3, "plugin": 4, "workflows": 5, "cli": 6}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _floor(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "nerf_posefix":
        return None
    return FLOORS.get(parts[1] if len(parts) > 1 else "__init__")


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # "from pkg import name" may name a module or an attribute: keep the longest module it names
            candidates = [m for m in modules if imported == m or imported.startswith(m + ".")]
            if candidates:
                targets.add(max(candidates, key=len))
        graph[name] = targets - {name}
    return graph


def test_every_module_is_on_a_floor() -> None:
    for name in _graph():
        assert _floor(name) is not None, f"{name} is on no floor: put it under one of {sorted(FLOORS)}"


def test_no_upward_import() -> None:
    upward = []
    for name, targets in _graph().items():
        for target in targets:
            if target == "nerf_posefix" or name == "nerf_posefix":
                continue
            if _floor(target) > _floor(name):  # type: ignore[operator]
                upward.append(f"{name} (floor {_floor(name)}) imports {target} (floor {_floor(target)})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == "nerf_posefix":
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_never_import_the_cli(path: Path) -> None:
    assert not [m for m in _imports(path) if m.startswith("nerf_posefix.cli")], f"{path.name} imports the CLI"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from nerf_posefix.cli.main import main\n", encoding="utf-8")
    assert "nerf_posefix.cli.main" in _imports(bad)
    assert _floor("nerf_posefix.cli.main") > _floor("nerf_posefix.geometry.poses")  # type: ignore[operator]
