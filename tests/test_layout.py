"""The package's shape: `function/` is the worker only, imports one way, and loads torch only where it must.

Each module is imported in a fresh interpreter, so what one import pulls in is measured, not guessed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = sorted(path.stem for path in (ROOT / "function").glob("*.py") if path.stem != "__init__")
# The modules that run DEMUCS (and what imports them to run a job); every other module stays light.
LOADS_TORCH = {"audio", "separation", "streaming", "core", "runner", "main"}
HEAVY = ("torch", "demucs")


def modules_after_import(module: str) -> set[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("name", ["function", *WORKER])
def test_worker_modules_never_load_the_workbench_and_light_ones_never_load_torch(name: str) -> None:
    module = name if name == "function" else f"function.{name}"
    loaded = modules_after_import(module)
    assert not any(m == "workbench" or m.startswith("workbench.") for m in loaded), module
    if name not in LOADS_TORCH:
        assert not loaded.intersection(HEAVY), f"{module} loads {sorted(loaded.intersection(HEAVY))}"


def imports_of(path: Path) -> set[str]:
    """The project modules a file imports, at any depth of the file (deferred imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_import_graph_has_no_cycle_and_no_arrow_from_worker_to_workbench() -> None:
    graph: dict[str, set[str]] = {}
    for package in ("function", "workbench"):
        for path in (ROOT / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            graph[name] = {m for m in imports_of(path) if m in {*graph, *_all_modules()} and m != name}
    for name, targets in graph.items():
        if name.startswith("function"):
            assert not any(t.startswith("workbench") for t in targets), (name, targets)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if target == "function" or target == "workbench":
                continue  # the package's own __init__ (lazy) is not an edge back into a module
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*trail, node, target])
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def _all_modules() -> set[str]:
    names = set()
    for package in ("function", "workbench"):
        names.update(f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py") if p.stem != "__init__")
    return names


def test_handle_is_exposed_lazily() -> None:
    code = ("import sys, function; assert 'torch' not in sys.modules; "
            "h = function.handle; assert 'torch' in sys.modules; print(h.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "function.core"
