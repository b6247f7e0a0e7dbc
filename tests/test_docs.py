"""The documentation covers every registered measure, and its navigation points at real pages.

These checks read the Markdown sources and mkdocs.yml as text, so they need neither mkdocs nor
its plugins (the test extra does not install them); CI builds the site with `mkdocs build
--strict` separately.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import genmeasures

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

# A measure's entry: a heading that shows its name in code and carries it as anchor, e.g.
#   ### `pacbayes-flatness` { #pacbayes-flatness }
ENTRY = re.compile(r"^#{2,6} `(?P<name>[^`]+)` \{ *#(?P<anchor>[^\s}]+) *\}\s*$", re.M)
OPTIONS_MARKER = re.compile(r"<!-- options: (?P<name>\S+) -->")


def _entries() -> dict[str, list[Path]]:
    entries: dict[str, list[Path]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for match in ENTRY.finditer(page.read_text(encoding="utf-8")):
            assert match["name"] == match["anchor"], (
                f"{page.relative_to(ROOT)}: heading `{match['name']}` has anchor "
                f"#{match['anchor']}; they must be the measure's name"
            )
            entries.setdefault(match["name"], []).append(page)
    return entries


def _nav_pages() -> list[str]:
    """The Markdown files named in mkdocs.yml's nav (the lines between `nav:` and the next key)."""
    text = MKDOCS_YML.read_text(encoding="utf-8")
    match = re.search(r"^nav:\s*\n(?P<body>(?:[ \t]+.*\n|\s*\n)+)", text, re.M)
    assert match, "mkdocs.yml has no nav"
    return re.findall(r"([\w./-]+\.md)\s*$", match["body"], re.M)


def test_every_registered_measure_has_one_entry() -> None:
    entries = _entries()
    names = [spec.name for spec in genmeasures.list_measures()]
    assert len(names) > 0
    missing = [name for name in names if name not in entries]
    assert not missing, f"registered measures without an entry in docs/: {missing}"
    duplicated = {name: pages for name, pages in entries.items() if len(pages) > 1}
    assert not duplicated, f"measures with more than one entry: {duplicated}"


def test_every_entry_is_a_registered_measure() -> None:
    names = {spec.name for spec in genmeasures.list_measures()}
    unknown = sorted(set(_entries()) - names)
    assert not unknown, f"docs/ has entries for measures that are not registered: {unknown}"


def test_every_entry_has_its_options_marker() -> None:
    # The options table of each entry is generated from the registry by docs/hooks.py.
    markers: dict[str, int] = {}
    for page in DOCS.rglob("*.md"):
        for match in OPTIONS_MARKER.finditer(page.read_text(encoding="utf-8")):
            markers[match["name"]] = markers.get(match["name"], 0) + 1
    names = [spec.name for spec in genmeasures.list_measures()]
    assert [name for name in names if markers.get(name) != 1] == []
    assert sorted(set(markers) - set(names)) == []


@pytest.mark.parametrize("page", _nav_pages())
def test_nav_page_exists(page: str) -> None:
    assert (DOCS / page).is_file(), f"mkdocs.yml nav names docs/{page}, which does not exist"


def test_nav_lists_every_page() -> None:
    pages = set(_nav_pages())
    assert {"index.md", "api.md", "measures/index.md"} <= pages
    on_disk = {page.relative_to(DOCS).as_posix() for page in DOCS.rglob("*.md")}
    assert sorted(on_disk - pages) == [], "pages missing from mkdocs.yml's nav"
