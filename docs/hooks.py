"""MkDocs hook: the tables of the measure pages, generated from the registry at build time.

Two markers are replaced in the Markdown of every page:

- ``<!-- options: NAME -->``: the domain where measure NAME's definition holds
  (``genmeasures.get_measure(NAME).domain``, checked by ``compute``), then its options, read
  from the one declaration the registry holds (``genmeasures.get_measure(NAME).options``, a
  dataclass deriving from ``genmeasures.validation.Settings``, rendered with
  ``genmeasures.validation.settings_table``), or "Options: none.";
- ``<!-- measures-table -->``: every registered measure with its equation, family, inputs and
  stochasticity and domain, linked to its entry.

Each measure's entry is found by its heading anchor ``{ #NAME }`` on a page under ``measures/``.
The build fails, naming what is wrong, if a marker names an unknown or non-canonical measure, if a
registered measure has no entry, or if the registry does not declare options the way this hook
expects.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

# The package is read from this checkout even when it is not installed.
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

OPTIONS_MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- options: (?P<name>\S+) -->[ \t]*$", re.M)
TABLE_MARKER = re.compile(r"^[ \t]*<!-- measures-table -->[ \t]*$", re.M)
ANCHOR = re.compile(r"^#{2,6} .*\{ *#(?P<name>[^\s}]+) *\}[ \t]*$", re.M)

#: Measure name → the page (relative to ``docs/``) holding its entry; filled by ``on_config``.
_ENTRIES: dict[str, str] = {}


def _registry() -> Any:
    try:
        import genmeasures
    except ImportError as error:  # pragma: no cover - a broken environment
        raise PluginError(f"docs/hooks.py: cannot import genmeasures: {error}") from error
    return genmeasures


def _entries(docs_dir: Path) -> dict[str, str]:
    """Measure name → page, from the heading anchors of ``docs/measures/*.md``."""
    entries: dict[str, str] = {}
    for page in sorted((docs_dir / "measures").glob("*.md")):
        relative = page.relative_to(docs_dir).as_posix()
        for match in ANCHOR.finditer(page.read_text(encoding="utf-8")):
            name = match["name"]
            if name in entries:
                raise PluginError(
                    f"docs/hooks.py: measure {name!r} has entries in {entries[name]} and {relative}"
                )
            entries[name] = relative
    return entries


def on_config(config: Any) -> Any:
    """Check that every registered measure has exactly one entry in ``docs/measures/``."""
    gm = _registry()
    _ENTRIES.clear()
    _ENTRIES.update(_entries(Path(config["docs_dir"])))
    missing = [spec.name for spec in gm.list_measures() if spec.name not in _ENTRIES]
    if missing:
        raise PluginError(
            "docs/hooks.py: registered measures without an entry (a heading with the anchor "
            f"{{ #NAME }}) in docs/measures/: {', '.join(missing)}"
        )
    return config


def _cell(text: str) -> str:
    """Text for one cell of a Markdown table."""
    for character in "\\|*_`":
        text = text.replace(character, "\\" + character)
    return text.replace("\n", " ")


def domain_markdown(name: str) -> str:
    """Where a measure's definition holds, as one Markdown line."""
    from genmeasures.models.architecture import REQUIREMENT_TEXT

    domain = _registry().get_measure(name).domain
    return (
        f"**Domain:** `{domain}`, {REQUIREMENT_TEXT[domain]}; outside it `compute` reports "
        "`unsupported` with the module and the reason."
    )


def options_markdown(name: str) -> str:
    """The options of one measure as Markdown: a table, or "No options."."""
    gm = _registry()
    from genmeasures.validation import Settings, settings_table

    spec = gm.get_measure(name)
    if spec.name != name:
        raise PluginError(
            f"docs/hooks.py: options marker names {name!r}, an alias of {spec.name!r}; "
            "use the canonical name"
        )
    if not hasattr(spec, "options"):
        raise PluginError(
            "docs/hooks.py: the registry's MeasureSpec has no `options` attribute; the option "
            "tables need each measure to declare its options as a genmeasures.validation."
            "Settings dataclass (MeasureSpec.options, None for a measure without options)"
        )
    options = spec.options
    if options is None:
        return "**Options:** none."
    if not (isinstance(options, type) and issubclass(options, Settings)):
        raise PluginError(
            f"docs/hooks.py: get_measure({name!r}).options is {options!r}; expected None or a "
            "subclass of genmeasures.validation.Settings"
        )
    rows = settings_table(options)
    if not rows:
        return "**Options:** none."
    lines = [
        f'**Options** (`options={{"{name}": {{...}}}}`):',
        "",
        "| option | default | accepts | what it is |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{row['name']}` | `{row['default']!r}` | {_cell(row['accepts'])} "
        f"| {_cell(row['doc'])} |"
        for row in rows
    ]
    return "\n".join(lines)


def measures_table(page_path: str) -> str:
    """Every registered measure, in catalog order, linked to its entry from ``page_path``."""
    gm = _registry()
    here = posixpath.dirname(page_path)
    lines = [
        "| measure | eq | family | needs | stochastic | domain |",
        "|---|---|---|---|---|---|",
    ]
    for spec in gm.list_measures():
        link = posixpath.relpath(_ENTRIES[spec.name], here or ".")
        needs = ", ".join(sorted(spec.needs)) or "—"
        lines.append(
            f"| [`{spec.name}`]({link}#{spec.name}) | {spec.eq} | {spec.family} "
            f"| {needs} | {spec.stochastic} | {spec.domain} |"
        )
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the option and measure-table markers of a page."""

    def options(match: re.Match[str]) -> str:
        indent, name = match["indent"], match["name"]
        text = domain_markdown(name) + "\n\n" + options_markdown(name)
        return "\n".join(indent + line if line else line for line in text.split("\n"))

    markdown = OPTIONS_MARKER.sub(options, markdown)
    return TABLE_MARKER.sub(lambda _: measures_table(page.file.src_uri), markdown)
