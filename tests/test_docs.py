"""The docs stay in step with the tree: every relative link resolves, the README's layout table names every
package module and top-level entry (and nothing that is gone), and its configuration table names every setting."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from function.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```.*?```", re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_BLOCK.sub("", path.read_text())
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(CODE_BLOCK.sub("", path.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        anchor_missing = bool(anchor) and path.suffix == ".md" and path.exists() and anchor not in anchors(path)
        if not path.exists() or anchor_missing:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def layout_paths() -> set[str]:
    paths = set()
    for line in section("Layout").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            paths.update(p.rstrip("/") for p in re.findall(r"`([^`]+)`", first_cell))
    return paths


def tracked_top_level() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.split("/")[0] for line in out.splitlines() if line and (ROOT / line).exists()}


def test_layout_table_matches_the_tree() -> None:
    named = layout_paths()
    missing_from_tree = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing_from_tree, f"README layout names paths that do not exist: {missing_from_tree}"
    packages = [d.name for d in ROOT.iterdir() if (d / "__init__.py").exists() and d.name not in ("tests", "bench")]
    modules = {f"{pkg}/{f.name}" for pkg in packages for f in (ROOT / pkg).glob("*.py") if f.name != "__init__.py"}
    unnamed = sorted(modules - named)
    assert not unnamed, f"README layout leaves out modules: {unnamed}"
    top = sorted(t for t in tracked_top_level() if t not in named and t not in (".gitignore",))
    assert not top, f"README layout leaves out top-level entries: {top}"


def test_configuration_table_names_every_setting() -> None:
    first_cells = [line.split("|")[1] for line in section("Configuration").splitlines() if line.startswith("| `")]
    named = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    missing = sorted(name.upper() for name in Settings.model_fields if name.upper() not in named)
    assert not missing, f"README configuration table leaves out {missing}"
    unknown = sorted(n for n in named if n.lower() not in Settings.model_fields)
    assert not unknown, f"README configuration table names unknown settings {unknown}"
