"""The report's pages: ``report.md`` and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from genmeasures.evaluate.report.formats import (
    _markdown_text,
    findings,
    leaderboard,
    to_html,
    to_markdown,
)
from genmeasures.evaluate.scoring import Evaluation


@dataclass(frozen=True)
class FigureSection:
    """Figures shown together under one heading of the report.

    Attributes:
        heading: The heading.
        figures: ``(caption, path relative to the report, PNG bytes)`` of each figure.
        folded: Whether the HTML page folds them (``<details>``): the page stays short when a
            section holds a figure per measure.
    """

    heading: str
    figures: Sequence[tuple[str, str, bytes]]
    folded: bool = False


def _models_sentence(ev: Evaluation) -> str:
    present, full = ev.coverage
    text = (
        f"{ev.models} models scored; {ev.excluded} excluded (did not reach their stopping "
        f"criterion); {present} of {full} hyperparameter combinations present."
    )
    if ev.dropped:
        text += f" {len(ev.dropped)} measures dropped models with a NaN value."
    return text


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1250px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1, h2, h3 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
caption { caption-side: top; text-align: left; color: #444; padding-bottom: 0.4em; }
th, td { padding: 2px 8px; border-bottom: 1px solid #e2e2e2; }
thead th { border-bottom: 2px solid #555; text-align: left; }
th[scope=row] { text-align: left; font-weight: normal; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody.baselines tr:first-child th, tbody.baselines tr:first-child td {
  border-top: 2px solid #555; }
tbody.baselines th { font-style: italic; }
figure { margin: 1em 0 2em; }
figcaption { color: #444; font-size: 0.9em; }
img { max-width: 100%; height: auto; }
.description { white-space: pre-wrap; }
.findings { font-size: 1.05em; max-width: 60em; }
nav ul { columns: 2; }
details > summary { cursor: pointer; font-weight: 600; margin: 0.5em 0; }
""".strip()


def _html_page(
    title: str,
    description: str,
    ev: Evaluation,
    tables: Sequence[tuple[str, pd.DataFrame]],
    figures: Sequence[FigureSection],
    population: Sequence[str],
) -> str:
    esc = html.escape
    sections = ["Findings", "Population and notes", *(h for h, _ in tables), "Figures"]
    anchors = {heading: f"section-{k}" for k, heading in enumerate(sections)}
    body = [f"<h1>{esc(title)}</h1>"]
    body.append(f'<h2 id="{anchors["Findings"]}">Findings</h2>')
    body.append(f'<p class="findings">{esc(findings(ev))}</p>')
    body.append(to_html(leaderboard(ev)))
    toc = "".join(f'<li><a href="#{anchors[h]}">{esc(h)}</a></li>' for h in sections[1:])
    body.append(f"<nav><ul>{toc}</ul></nav>")
    body.append(f'<h2 id="{anchors["Population and notes"]}">Population and notes</h2>')
    body.append(f"<p>{esc(_models_sentence(ev))}</p>")
    if ev.notes:
        body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in ev.notes) + "</ul>")
    if description:
        body.append(
            "<details><summary>The population's description</summary>"
            f'<p class="description">{esc(description)}</p></details>'
        )
    for heading, table in tables:
        body.append(f'<h2 id="{anchors[heading]}">{esc(heading)}</h2>')
        body.append(f"<details><summary>Show the table</summary>{to_html(table)}</details>")
    body.append(f'<h2 id="{anchors["Figures"]}">Figures</h2>')
    if population:
        body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in population) + "</ul>")
    for section in figures:
        shown = [
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}"><figcaption>{esc(caption)}</figcaption>'
            "</figure>"
            for caption, _, png in section.figures
        ]
        if section.folded:
            summary = f"{esc(section.heading)} ({len(shown)} figures)"
            body.append(f"<details><summary>{summary}</summary>{''.join(shown)}</details>")
        else:
            body += [f"<h3>{esc(section.heading)}</h3>", *shown]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _markdown_page(
    title: str,
    description: str,
    ev: Evaluation,
    tables: Sequence[tuple[str, pd.DataFrame]],
    figures: Sequence[FigureSection],
    population: Sequence[str],
) -> str:
    lines = [f"# {_markdown_text(title)}", "", "## Findings", ""]
    lines += [_markdown_text(findings(ev)), "", to_markdown(leaderboard(ev))]
    lines += ["## Population and notes", "", _markdown_text(_models_sentence(ev)), ""]
    if ev.notes:
        lines += [*(f"- {_markdown_text(n)}" for n in ev.notes), ""]
    if description:
        lines += [description.strip(), ""]
    for heading, table in tables:
        lines += [f"## {heading}", "", to_markdown(table)]
    lines += ["## Figures", ""]
    if population:
        lines += [*(f"- {_markdown_text(n)}" for n in population), ""]
    for section in figures:
        lines += [f"### {_markdown_text(section.heading)}", ""]
        for caption, path, _ in section.figures:
            text = _markdown_text(caption)
            lines += [f"![{text}]({path})", "", f"*{text}*", ""]
    return "\n".join(lines)
