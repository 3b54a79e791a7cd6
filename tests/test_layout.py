"""The package's shape: `function/` is the worker only, imports one way, and loads torch only where it must;
the workbench and the benchmark harness (`bench/`, run as `python -m bench.…`) import the worker, never the reverse.

Each module is imported in a fresh interpreter, so what one import pulls in is measured, not guessed."""

from __future__ import annotations

import ast
import json
import os
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
    # function.main builds its worker on import, and a worker needs the object store's credentials to start.
    env = {**os.environ, "MINIO_ACCESS_KEY": "layout", "MINIO_SECRET_KEY": "layout"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
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


# The packages whose imports are checked: the worker, the operator tools, the workbench and the benchmark harness.
PACKAGES = ("function", "stemops", "workbench", "bench")


def module_files() -> dict[str, Path]:
    """Every module of PACKAGES, subpackages included, by dotted name (a package is its __init__)."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: {m for m in imports_of(path) if m in files and m != name} for name, path in files.items()}


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if node.startswith(target + "."):
                continue  # a module importing its own package's __init__ (lazy re-exports) is not an edge back
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*trail, node, target])
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize(
    ("package", "never"),
    [("function", ("workbench", "stemops", "bench")), ("stemops", ("workbench", "bench")), ("workbench", ("bench",))],
)
def test_imports_point_one_way(package: str, never: tuple[str, ...]) -> None:
    """function <- stemops <- workbench <- bench: nothing imports a package that stands beside or above it
    (stemops' generated clip is an optional, guarded import of the workbench and is the one exception)."""
    allowed = {("stemops.cli", "workbench")}
    for name, targets in import_graph().items():
        if name == package or name.startswith(package + "."):
            wrong = {t for t in targets if t.split(".")[0] in never and (name, t.split(".")[0]) not in allowed}
            assert not wrong, (name, sorted(wrong))


def edits_sys_path(path: Path) -> bool:
    """Whether a file changes `sys.path` (insert, append, assignment): a package needs none of that."""
    for node in ast.walk(ast.parse(path.read_text())):
        target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        if isinstance(node, ast.Assign | ast.AugAssign):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            target = target.value if isinstance(target, ast.Subscript) else target
        if (
            isinstance(target, ast.Attribute)
            and target.attr == "path"
            and isinstance(target.value, ast.Name)
            and target.value.id == "sys"
        ):
            return True
    return False


def test_no_module_edits_sys_path() -> None:
    """Only the functions-framework entry file may: the framework loads it as a file, without the package root."""
    assert edits_sys_path(ROOT / "tests" / "test_main.py")  # the check sees a real edit (it restores sys.path)
    editing = [name for name, path in module_files().items() if edits_sys_path(path)]
    assert editing == ["function.main"], editing


def test_handle_is_exposed_lazily() -> None:
    code = (
        "import sys, function; assert 'torch' not in sys.modules; "
        "h = function.handle; assert 'torch' in sys.modules; print(h.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "function.core"
