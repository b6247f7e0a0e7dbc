"""Tables as text: Markdown, LaTeX, HTML, CSV and JSON, and the summary printed after a study.

Every writer takes a table of :mod:`~genmeasures.evaluate.report.tables` (or any DataFrame with
measure names as index) and reads its caption, decimals and baseline rows from ``attrs``.
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from genmeasures.evaluate.report.tables import (
    BASELINES_ATTR,
    CAPTION_ATTR,
    COLUMN_DECIMALS_ATTR,
    DECIMALS_ATTR,
    LABEL_ATTR,
    TAU_A,
    TREND_COLUMNS,
    population_notes,
    trend_hparams,
    trend_table,
)
from genmeasures.evaluate.robust import ALL_TYPES
from genmeasures.evaluate.scoring import CANONICAL_ROW, RANDOM_ROW, Evaluation

#: Longest measure name shown in plot labels and :func:`format_summary` before truncation.
NAME_WIDTH = 36

#: Columns of ``trends.csv``: :func:`trend_table` of each hyperparameter, one after the other.
TRENDS_CSV_COLUMNS = ("hparam", "measure", "level", *TREND_COLUMNS)

_LATEX_HEADERS = {
    "τ": r"$\tau$",
    "Ψ": r"$\Psi$",
    "|S|=0": r"$|S|=0$",
    "|S|=1": r"$|S|=1$",
    "|S|=2": r"$|S|=2$",
    "K": r"$K$",
    "K set": r"$K$ set",
    "r": r"$r$",
}
_LATEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "τ": r"$\tau$",
    "Ψ": r"$\Psi$",
    "ψ": r"$\psi$",
    "Î": r"$\hat{I}$",
    "μ": r"$\mu$",
    "ε": r"$\varepsilon$",
    "∅": r"$\emptyset$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "×": r"$\times$",
    "−": "-",
    "…": r"\ldots{}",
}
_MARKDOWN_SPECIAL = frozenset("\\`*<>[]#$~")


def format_number(value: Any, decimals: int) -> str | None:
    """A table cell as text: numbers with ``decimals`` decimals, None for a missing value.

    Args:
        value: A cell of a table.
        decimals: Decimals of a real number (3 for τ, ψ, Ψ and r; 4 for Î and K as in the
            paper's tables 5-6).

    Returns:
        The text, or None for NaN, None or ``pd.NA`` (each writer shows it its own way).
    """
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return "inf" if number > 0 else "-inf"
        text = f"{number:.{decimals}f}"
        return f"{0.0:.{decimals}f}" if float(text) == 0 else text
    return str(value)


def _rows(
    df: pd.DataFrame, decimals: int | None
) -> tuple[list[str], list[bool], list[tuple[str, list[str | None]]]]:
    """Headers (index name first), which columns are numeric, and the formatted rows."""
    places = int(df.attrs.get(DECIMALS_ATTR, 3) if decimals is None else decimals)
    apart = df.attrs.get(COLUMN_DECIMALS_ATTR, {}) if decimals is None else {}
    column_places = [int(apart.get(c, places)) for c in df.columns]
    headers = [str(df.index.name or "measure"), *map(str, df.columns)]
    numeric = [True] + [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    columns = [df.iloc[:, j].tolist() for j in range(df.shape[1])]  # each keeps its own type
    rows = [
        (str(label), [format_number(c[i], d) for c, d in zip(columns, column_places, strict=True)])
        for i, label in enumerate(df.index)
    ]
    return headers, numeric, rows


def _baseline_set(df: pd.DataFrame, baselines: Iterable[str] | None) -> set[str]:
    return set(df.attrs.get(BASELINES_ATTR, ()) if baselines is None else baselines)


def _split(
    rows: list[tuple[str, list[str | None]]], baselines: set[str]
) -> tuple[list[tuple[str, list[str | None]]], list[tuple[str, list[str | None]]]]:
    return [r for r in rows if r[0] not in baselines], [r for r in rows if r[0] in baselines]


def _markdown_text(text: str, *, cell: bool = False) -> str:
    """Backslash-escape the characters that Markdown would read as markup (and ``|`` in cells)."""
    special = _MARKDOWN_SPECIAL | {"|"} if cell else _MARKDOWN_SPECIAL
    text = "".join(f"\\{ch}" if ch in special else ch for ch in text)
    return " ".join(text.split())


def to_markdown(
    df: pd.DataFrame,
    caption: str | None = None,
    *,
    decimals: int | None = None,
    baselines: Iterable[str] | None = None,
) -> str:
    """A GitHub pipe table, its caption as a paragraph above it.

    Args:
        df: A table from :func:`rank_table`, :func:`cmi_table`, :func:`pearson_table` or any
            DataFrame with measure names as index.
        caption: Text above the table; None: ``df.attrs["caption"]`` if any.
        decimals: Decimals of every real number; None: ``df.attrs["decimals"]`` or 3, and
            ``df.attrs["column_decimals"]`` for the columns it names.
        baselines: Row labels shown in italics below the measures; None:
            ``df.attrs["baselines"]``.

    Returns:
        The Markdown text, missing values shown as ``N/A``.
    """
    headers, numeric, rows = _rows(df, decimals)
    measures, base = _split(rows, _baseline_set(df, baselines))
    cells = [[_markdown_text(h, cell=True) for h in headers]]
    for k, (label, values) in enumerate(measures + base):
        text = _markdown_text(label, cell=True)
        if k >= len(measures):
            text = f"*{text}*"
        cells.append([text, *(_markdown_text(v, cell=True) if v else "N/A" for v in values)])
    widths = [max(3, *(len(row[j]) for row in cells)) for j in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = [
            cell.rjust(width) if right and j else cell.ljust(width)
            for j, (cell, width, right) in enumerate(zip(row, widths, numeric, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(
        ("-" * (w - 1) + ":") if right and j else "-" * w
        for j, (w, right) in enumerate(zip(widths, numeric, strict=True))
    )
    lines = [line(cells[0]), rule + " |", *(line(row) for row in cells[1:])]
    caption = df.attrs.get(CAPTION_ATTR) if caption is None else caption
    head = [_markdown_text(caption), ""] if caption else []
    return "\n".join([*head, *lines]) + "\n"


def latex_escape(text: str) -> str:
    r"""``text`` with LaTeX's special characters escaped and Greek letters as math.

    ``\ & % $ # _ { } ~ ^ < > |`` are escaped; τ, Ψ, ψ, Î, μ, ε, ∅, ≤, ≥ and × become math.
    """
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in text)


def to_latex(
    df: pd.DataFrame,
    caption: str | None = None,
    *,
    decimals: int | None = None,
    baselines: Iterable[str] | None = None,
    label: str | None = None,
) -> str:
    r"""A LaTeX ``table`` (booktabs rules), a ``\midrule`` between measures and baselines.

    Args:
        df: A table from :func:`rank_table`, :func:`cmi_table`, :func:`pearson_table` or any
            DataFrame with measure names as index.
        caption: The caption; None: ``df.attrs["caption"]`` if any.
        decimals: Decimals of every real number; None: ``df.attrs["decimals"]`` or 3, and
            ``df.attrs["column_decimals"]`` for the columns it names.
        baselines: Row labels set below a rule; None: ``df.attrs["baselines"]``.
        label: The ``\label``; None: ``df.attrs["label"]`` if any.

    Returns:
        The LaTeX source (needs ``\usepackage{booktabs}``), missing values shown as ``N/A``.
    """
    headers, numeric, rows = _rows(df, decimals)
    measures, base = _split(rows, _baseline_set(df, baselines))
    caption = df.attrs.get(CAPTION_ATTR) if caption is None else caption
    label = df.attrs.get(LABEL_ATTR) if label is None else label
    spec = "".join("r" if right and j else "l" for j, right in enumerate(numeric))

    def line(name: str, values: list[str | None]) -> str:
        cells = [latex_escape(name), *(latex_escape(v) if v else "N/A" for v in values)]
        return " & ".join(cells) + r" \\"

    head = " & ".join(_LATEX_HEADERS.get(h, latex_escape(h)) for h in headers) + r" \\"
    lines = [
        r"% Requires \usepackage{booktabs}.",
        r"\begin{table}[htbp]",
        r"\centering",
    ]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + latex_escape(label) + "}")
    lines += [r"\begin{tabular}{" + spec + "}", r"\toprule", head, r"\midrule"]
    lines += [line(name, values) for name, values in measures]
    if measures and base:
        lines.append(r"\midrule")
    lines += [line(name, values) for name, values in base]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(
    df: pd.DataFrame,
    caption: str | None = None,
    *,
    decimals: int | None = None,
    baselines: Iterable[str] | None = None,
) -> str:
    """An HTML ``<table>``, baselines in their own ``<tbody class="baselines">``.

    Args:
        df: A table from :func:`rank_table`, :func:`cmi_table`, :func:`pearson_table` or any
            DataFrame with measure names as index.
        caption: The ``<caption>``; None: ``df.attrs["caption"]`` if any.
        decimals: Decimals of every real number; None: ``df.attrs["decimals"]`` or 3, and
            ``df.attrs["column_decimals"]`` for the columns it names.
        baselines: Row labels set in the second body; None: ``df.attrs["baselines"]``.

    Returns:
        The HTML, every text escaped, missing values shown as ``N/A``.
    """
    headers, numeric, rows = _rows(df, decimals)
    measures, base = _split(rows, _baseline_set(df, baselines))
    caption = df.attrs.get(CAPTION_ATTR) if caption is None else caption
    esc = html.escape

    def line(name: str, values: list[str | None]) -> str:
        cells = [f'<th scope="row">{esc(name)}</th>']
        for value, right in zip(values, numeric[1:], strict=True):
            css = ' class="num"' if right else ""
            cells.append(f"<td{css}>{esc(value) if value else 'N/A'}</td>")
        return "<tr>" + "".join(cells) + "</tr>"

    parts = ["<table>"]
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>")
    parts.append("<tbody>" + "".join(line(n, v) for n, v in measures) + "</tbody>")
    if base:
        parts.append(
            '<tbody class="baselines">' + "".join(line(n, v) for n, v in base) + "</tbody>"
        )
    parts.append("</table>")
    return "\n".join(parts) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """The table as CSV text via pandas: full precision, missing values empty."""
    return df.to_csv(na_rep="", lineterminator="\n")


def tau_null_sd(models: int) -> float:
    """The standard deviation of Kendall's τ-a between a random ranking and ``models`` untied gaps.

    ``sqrt(2(2n + 5) / (9n(n - 1)))`` (Kendall 1938): a measure's τ divided by it is its margin
    over chance in standard deviations at this population size; NaN below 2 models.
    """
    if models < 2:
        return math.nan
    return math.sqrt(2 * (2 * models + 5) / (9 * models * (models - 1)))


def ranked_measures(ev: Evaluation) -> list[str]:
    """The measures scored, best first: by Ψ, then by K (missing scores last)."""

    def key(name: str) -> tuple[float, float]:
        psi = ev.ranks.at[name, "Psi"] if name in ev.ranks.index else math.nan
        k = ev.cmi.at[name, "K"] if name in ev.cmi.index else math.nan
        return (-psi if math.isfinite(psi) else math.inf, -k if math.isfinite(k) else math.inf)

    return sorted((m for m in ev.measures if m in ev.ranks.index), key=key)


def findings(ev: Evaluation, *, best: int = 3) -> str:
    """A few sentences that answer the question: which measures rank the gap best, by how much.

    They name the ``best`` measures by Ψ (with Ψ's margin over chance in standard deviations,
    :attr:`~genmeasures.evaluate.Evaluation.null_psi_sd`, and τ), the best by K, the
    0.01-oracle's and the random measure's Ψ for reference, the
    type along which the best measure ranks worst (its lowest ψ_i), and how many values did not
    converge or models were excluded.
    """
    ranked = [m for m in ranked_measures(ev) if math.isfinite(ev.ranks.at[m, "Psi"])]
    if not ranked:
        return "No measure could be scored."

    def scores(name: str) -> str:
        psi, sd = ev.ranks.at[name, "Psi"], ev.null_psi_sd.get(name, math.nan)
        margin = f", {psi / sd:.1f} sd over chance" if math.isfinite(sd) and sd > 0 else ""
        return f"{name} (Ψ {psi:.3f}{margin}; τ {ev.ranks.at[name, 'tau']:.3f})"

    sentences = [f"Best by Ψ: {'; '.join(scores(name) for name in ranked[:best])}."]
    by_k = [m for m in ev.measures if m in ev.cmi.index and math.isfinite(ev.cmi.at[m, "K"])]
    if by_k:
        top = max(by_k, key=lambda name: ev.cmi.at[name, "K"])
        sentences.append(f"Best by K: {top} (K {ev.cmi.at[top, 'K']:.4f}).")
    references = [
        f"{name} Ψ {ev.ranks.at[name, 'Psi']:.3f}"
        for name in ev.baselines
        if name in ev.ranks.index
        and name != CANONICAL_ROW
        and (name == ev.baselines[0] or name == "random")
        and math.isfinite(ev.ranks.at[name, "Psi"])
    ]
    if references:
        sentences.append(f"For reference: {', '.join(references)}.")
    psi = ev.ranks.loc[ranked[0], [h for h in ev.hparams if h in ev.ranks.columns]].dropna()
    if len(psi) > 1:
        sentences.append(
            f"{ranked[0]} ranks worst along {psi.idxmin()} (ψ {psi.min():.3f}) and best along "
            f"{psi.idxmax()} (ψ {psi.max():.3f})."
        )
    if ev.robust is not None and ev.prediction is not None:
        sentences += _robust_findings(ev, ranked[:best])
    if ev.unconverged:
        treatment = "left out" if ev.converged_only else "scored as computed"
        values = sum(len(models) for models in ev.unconverged.values())
        measures = len(ev.unconverged)
        sentences.append(
            f"{values} value{'s' * (values != 1)} of {measures} measure{'s' * (measures != 1)} "
            f"did not converge ({treatment}; counted per measure in the table)."
        )
    if ev.excluded:
        sentences.append(f"{ev.excluded} models did not finish and are excluded.")
    return " ".join(sentences)


def _robust_findings(ev: Evaluation, best: Sequence[str]) -> list[str]:
    """Sentences on the robust part: the worst environment of the best measures, the best R²."""
    assert ev.robust is not None and ev.prediction is not None
    worst = ev.robust.summary[(ALL_TYPES, "max")]
    named = [f"{name} {worst[name]:.2f}" for name in best if math.isfinite(worst.get(name, np.nan))]
    sentences = []
    if named:
        chance = worst.get(RANDOM_ROW, np.nan)
        reference = f" (random measure {chance:.2f})" if math.isfinite(chance) else ""
        sentences.append(
            "Worst sign-error over environments (Dziugaite et al. 2020; 0 orders every clear "
            f"pair right, 1 every one wrong): {', '.join(named)}{reference}."
        )
    elif ev.robust.environments.empty:
        sentences += ev.robust.environment_notes[-1:]
    r2 = ev.prediction["r2"].dropna()
    if len(r2):
        sentences.append(f"Best held-out R² of the gap: {r2.idxmax()} ({r2.max():.2f}).")
    return sentences


def leaderboard(ev: Evaluation) -> pd.DataFrame:
    """The measures ranked (:func:`ranked_measures`), then the oracles and the random measure.

    Columns: Ψ, Ψ/sd (Ψ's margin over chance in standard deviations,
    :attr:`~genmeasures.evaluate.Evaluation.null_psi_sd`), τ, τ/sd (the same for τ,
    :func:`tau_null_sd`), K; with a robust part, ``worst`` (the largest sign-error of an
    environment over every type, Dziugaite et al. 2020) and ``R²`` (the held-out R² of the gap);
    and ``unconverged``, the scored values of the measure that did not converge (0 for a plain
    table, which does not say).
    """
    rows = {}
    names = [*ranked_measures(ev), *(b for b in ev.baselines if b != CANONICAL_ROW)]
    for name in names:
        tau = ev.ranks.at[name, "tau"] if name in ev.ranks.index else np.nan
        psi = ev.ranks.at[name, "Psi"] if name in ev.ranks.index else np.nan
        sd = tau_null_sd(ev.models - ev.dropped.get(name, 0))
        rows[name] = {
            "Ψ": psi,
            "Ψ/sd": psi / ev.null_psi_sd.get(name, np.nan),
            "τ": tau,
            "τ/sd": tau / sd if math.isfinite(sd) and sd > 0 else np.nan,
            "K": ev.cmi.at[name, "K"] if name in ev.cmi.index else np.nan,
        }
        if ev.robust is not None and ev.prediction is not None:
            summary = ev.robust.summary
            rows[name]["worst"] = (
                summary.at[name, (ALL_TYPES, "max")] if name in summary.index else np.nan
            )
            rows[name]["R²"] = ev.prediction["r2"].get(name, np.nan)
        rows[name]["unconverged"] = (
            len(ev.unconverged.get(name, ())) if name in ev.measures else np.nan
        )
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("measure")
    table["unconverged"] = table["unconverged"].astype("Int64")  # counts, not reals
    table.attrs["baselines"] = [b for b in ev.baselines if b in rows]
    table.attrs["decimals"] = 3
    table.attrs[COLUMN_DECIMALS_ATTR] = {"Ψ/sd": 1, "τ/sd": 1, "K": 4}
    robust = (
        ", the worst sign-error over environments (Dziugaite et al. 2020), the held-out R² of "
        "the gap"
        if "worst" in table.columns
        else ""
    )
    table.attrs["caption"] = (
        "Measures ranked by Ψ (then K), with Ψ and τ each divided by its standard deviation "
        f"under chance on these models (the margin over chance), K{robust} and the values that "
        "did not converge; the oracles and the random measure below for reference."
    )
    return table


def format_summary(ev: Evaluation, *, name_width: int = NAME_WIDTH) -> str:
    """The table printed after a study: the findings, then the measures ranked, then baselines.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        name_width: Longest row label shown; longer ones are cut with ``…``.

    Returns:
        :func:`findings` wrapped to 100 characters; a line stating that τ is Kendall's τ-a and
        how many models were scored and excluded; one line per measure, best first
        (:func:`ranked_measures`), with Ψ, Ψ and τ's margins over chance in standard
        deviations (:func:`leaderboard`), K and the values that did not converge; a rule; one line
        per oracle and the random measure (missing values read ``N/A``); and a last line with the
        canonical orderings' ψ of their own types.
    """
    width = max(len("measure"), min(name_width, max((len(r) for r in ev.ranks.index), default=0)))
    board = leaderboard(ev)
    # τ/sd stays in the report's leaderboard: with the robust columns the line would pass 100.
    shown = [c for c in board.columns if c != "unconverged" and not (c == "τ/sd" and ev.robust)]
    places = {c: board.attrs[COLUMN_DECIMALS_ATTR].get(c, 3) for c in shown}
    line = f"{{:<{width}}}" + "  {:>7}" * (len(shown) + 1)

    def row(name: str) -> str:
        cells = [format_number(board.at[name, c], places[c]) or "N/A" for c in shown]
        unconverged = board.at[name, "unconverged"]
        flag = str(int(unconverged)) if not pd.isna(unconverged) and unconverged else ""
        return line.format(_shorten(name, width), *cells, flag).rstrip()

    head = (
        f"{TAU_A}. {ev.models} models scored, {ev.excluded} excluded (not finished)"
        + (f", measures with NaN values: {len(ev.dropped)}" if ev.dropped else "")
        + "."
    )
    paragraph = textwrap.fill(findings(ev), 100)
    header = line.format("measure", *shown, "unconv.")
    lines = [paragraph, "", head, header]
    baselines = set(board.attrs["baselines"])
    lines += [row(name) for name in board.index if name not in baselines]
    lines.append("-" * len(header))
    lines += [row(name) for name in board.index if name in baselines]
    if CANONICAL_ROW in ev.ranks.index:
        own = ev.ranks.loc[CANONICAL_ROW, list(ev.hparams)].dropna()
        scores = ", ".join(f"{name} {value:.3f}" for name, value in own.items())
        lines.append(f"{CANONICAL_ROW} (ψ of each type's own order): {scores or 'N/A'}")
    return "\n".join(lines)


def _shorten(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _json_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if pd.isna(value):
        return None
    return str(value)


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"measure": str(label), **{str(c): _json_value(v) for c, v in row.items()}}
        for label, row in zip(table.index, table.to_dict(orient="records"), strict=True)
    ]


def summary_json(ev: Evaluation, *, title: str = "", description: str = "") -> str:
    """The machine-readable summary written as ``summary.json`` (NaN as ``null``).

    The tables are the raw :class:`~genmeasures.evaluate.scoring.Evaluation` tables as records
    (columns ``tau``, ``Psi``, ``K``, ...; one record per row with its ``measure``).
    """
    present, full = ev.coverage
    content = {
        "title": title,
        "description": description,
        "tau": "Kendall tau-a: ties count 0",
        "models": ev.models,
        "excluded": ev.excluded,
        "dropped": dict(ev.dropped),
        "coverage": {"present": present, "full": full},
        "groups": {k: {"used": u, "skipped": s} for k, (u, s) in ev.groups.items()},
        "gap": ev.gap,
        "hparams": list(ev.hparams),
        "architecture": ev.architecture,
        "measures": list(ev.measures),
        "baselines": list(ev.baselines),
        "epsilons": list(ev.epsilons),
        "draws": ev.draws,
        "seed": ev.seed,
        "notes": list(ev.notes),
        "population_notes": population_notes(ev),
        "ranks": _records(ev.ranks),
        "cmi": _records(ev.cmi),
        "pearson": _records(ev.pearson),
    }
    if ev.robust is not None and ev.prediction is not None:
        summary = ev.robust.summary
        content["robust"] = {
            "test_size": ev.robust.test_size,
            "min_ess": ev.robust.min_ess,
            "environments": {
                name: {"kept": kept, "dropped": low}
                for name, (kept, low) in ev.robust.environment_counts.items()
            },
            "summary": [
                {
                    "measure": row,
                    **{f"{t} {stat}": summary.at[row, (t, stat)] for t, stat in summary},
                }
                for row in summary.index
            ],
            "notes": list(ev.robust.notes),
        }
        content["prediction"] = _records(ev.prediction)
    return json.dumps(_json_value(content), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def trends_csv(ev: Evaluation) -> str:
    """The machine-readable trends written as ``trends.csv`` (Tsuzuku et al. 2020, figures 1-2).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        CSV text with the columns :data:`TRENDS_CSV_COLUMNS`: :func:`trend_table` of each of
        :func:`trend_hparams` one after the other, the hyperparameter named in ``hparam`` and
        its level in ``level``; only the header when there is no trend axis. Missing values
        (no series, a std of one model) are empty.
    """
    tables = [
        trend_table(ev, hparam).rename(columns={hparam: "level"}).assign(hparam=hparam)
        for hparam in trend_hparams(ev)
    ]
    columns = list(TRENDS_CSV_COLUMNS)
    table = pd.concat(tables)[columns] if tables else pd.DataFrame(columns=columns)
    return table.to_csv(index=False, na_rep="", lineterminator="\n")
