"""Tables, plots and a report of an :class:`~genmeasures.evaluate.scoring.Evaluation`.

The paper's tables (Jiang et al. 2020, tables 5-6; Tsuzuku et al. 2020, tables 1-2) as
DataFrames ready to print, written as Markdown, LaTeX, CSV and HTML; the plots of
``EVALUATION.md`` ("Output"): each measure against the gap coloured by hyperparameter, Ψ and K
per measure next to the baselines, and the population summary of Jiang et al. 2020, figure 1;
how each measure moves along each hyperparameter, rescaled to [0, 1] per architecture, as a
table and small multiples (:func:`trend_table`, :func:`trend_figure`; Tsuzuku et al. 2020,
figures 1-2); and :func:`write_report`, which writes all of them into one folder with a Markdown
and a self-contained HTML page.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with their own Agg canvas, so
nothing here touches pyplot's global state or the caller's backend.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator
from PIL import Image

from genmeasures.evaluate.scoring import CANONICAL_ROW, RANDOM_ROW, Evaluation, oracle_row
from genmeasures.evaluate.table import REPLICATE_COLUMNS

#: The statement that every rank table carries: τ is Kendall's τ-a (``EVALUATION.md``).
TAU_A = "Kendall τ-a: ties count 0"

#: A model "fits its training set" in the population summary when its training error is below
#: this (training accuracy above 99%, Jiang et al. 2020, figure 1, left).
FIT_ERROR = 0.01

#: Resolution of every PNG written: ~40 scatter figures stay a few MB in the HTML page.
DPI = 100

#: Longest measure name shown in plot labels and :func:`format_summary` before truncation.
NAME_WIDTH = 40

#: Columns of :func:`trend_table` after ``measure`` and the hyperparameter's own column.
TREND_COLUMNS = ("series", "series_level", "mean", "std", "count")

#: A trend's x axis is logarithmic when its levels are positive and the largest is at least this
#: many times the smallest (widths 32 to 2048, Tsuzuku et al. 2020, figure 2).
LOG_SPAN = 8.0

#: Columns of ``trends.csv``: :func:`trend_table` of each hyperparameter, one after the other.
TRENDS_CSV_COLUMNS = ("hparam", "measure", "level", *TREND_COLUMNS)

#: Panels per row of :func:`trend_figure`, and the longest measure name in a panel's title:
#: five panels keep ~50 measures legible 1250 pixels wide.
TREND_PANELS_PER_ROW, TREND_NAME_WIDTH = 5, 34

#: Keys of ``DataFrame.attrs`` that the table builders set and the writers read.
BASELINES_ATTR, DECIMALS_ATTR, CAPTION_ATTR, LABEL_ATTR = (
    "baselines",
    "decimals",
    "caption",
    "label",
)

_READABLE = {"tau": "τ", "Psi": "Ψ"}
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
_SLUG_BAD = re.compile(r"[^a-z0-9._-]+")


# --------------------------------------------------------------------------------------------
# Tables


def rank_table(ev: Evaluation) -> pd.DataFrame:
    """The rank-correlation table (Jiang et al. 2020, eqs 2-5, table 5).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        Rows: the measures, then the baselines. Columns: ψ_i labelled by the hyperparameter
        type, ``τ`` (Kendall's τ-a over every scored model) and ``Ψ``. ``attrs`` holds the
        baseline rows, the decimals (3), a caption and a LaTeX label for the writers.
    """
    table = ev.ranks.rename(columns=_READABLE).rename_axis("measure")
    caption = (
        "Rank correlation with the generalization gap (Jiang et al. 2020, eqs 2-5, table 5). "
        f"{TAU_A}. Columns: ψ_i per hyperparameter type (τ within groups of models that differ "
        "only in that type, averaged over the groups), τ over every scored model, Ψ = mean of "
        "ψ_i. " + _baselines_sentence(ev)
    )
    return _annotated(table, ev.baselines, decimals=3, caption=caption, label="tab:ranks")


def cmi_table(ev: Evaluation) -> pd.DataFrame:
    """The conditional mutual information table (Jiang et al. 2020, appendix B, table 6).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        Rows: the measures, then the baselines that have a CMI row (the oracles and the random
        measure). Columns: Î(μ, {i}) labelled by the hyperparameter type, the minima over
        ``|S|=0``, ``|S|=1``, ``|S|=2``, ``K`` (eq 14) and ``K set``. ``attrs`` as in
        :func:`rank_table`, with 4 decimals.
    """
    caption = (
        "Conditional mutual information Î(μ, S) = I(V_μ; V_g | U_S) / H(V_g | U_S) between the "
        "sign of a measure's difference and the sign of the gap's difference over pairs of "
        "models (Jiang et al. 2020, appendix B, eqs 11-14, table 6). Columns: Î conditioned on "
        "each hyperparameter type, its minimum over the sets S with |S| = 0, 1 and 2, K = min "
        "over |S| ≤ 2 and the minimizing set (∅: the empty set). Pairs tied in the measure or "
        "the gap are dropped. " + _baselines_sentence(ev, canonical=False)
    )
    table = ev.cmi.rename_axis("measure")
    return _annotated(table, ev.baselines, decimals=4, caption=caption, label="tab:cmi")


def pearson_table(ev: Evaluation) -> pd.DataFrame:
    """Pearson's r between each measure and the gap, per architecture (Tsuzuku et al. 2020).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        Rows: the measures. Columns: one per architecture (``r`` when the table was scored as
        one architecture). ``attrs`` as in :func:`rank_table`, with 3 decimals and no baselines.
    """
    table = ev.pearson.rename_axis("measure")
    if ev.architecture is None:
        table = table.rename(columns={"all": "r"})
    by = f" per {ev.architecture}" if ev.architecture is not None else ""
    caption = (
        f"Pearson correlation r between each measure and the generalization gap{by} (Tsuzuku "
        "et al. 2020, section 8, tables 1-2), over the scored models with a finite value."
    )
    return _annotated(table, (), decimals=3, caption=caption, label="tab:pearson")


def trend_hparams(ev: Evaluation) -> tuple[str, ...]:
    """The hyperparameters that :func:`trend_table` and :func:`trend_figure` run along.

    They are the types of ``ev.hparams`` with at least 2 numeric levels among the scored models
    (widths, depths, fractions of random labels; not an optimizer's name), seeds
    (:data:`REPLICATE_COLUMNS`) left out: a seed replicates a model, it is no trend axis.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        The hyperparameter columns, in the order of ``ev.hparams``.
    """
    return tuple(
        name
        for name in ev.hparams
        if name not in REPLICATE_COLUMNS
        and pd.api.types.is_numeric_dtype(ev.scored[name])
        and not pd.api.types.is_bool_dtype(ev.scored[name])
        and ev.scored[name].nunique() >= 2
    )


def trend_table(ev: Evaluation, hparam: str) -> pd.DataFrame:
    """How each measure and the gap move along a hyperparameter (Tsuzuku et al. 2020, figs 1-2).

    Each measure's column and the gap are rescaled to [0, 1] by min-max over the scored models
    of each architecture (``ev.architecture``; all models as one when None), as the paper's
    figure 1 does for the fractions of random labels: a constant column rescales to 0, and NaN
    or infinite values are left out. The rescaled values are then averaged over the models at
    each level of ``hparam``. When :func:`trend_hparams` finds exactly two axes (width and depth,
    the paper's figure 2), the trend along one is split by the levels of the other, the series;
    otherwise the mean runs over every model at the level: its seeds and every other type.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        hparam: One of :func:`trend_hparams`.

    Returns:
        Long format, one row per measure (``ev.measures``, then the gap labelled ``ev.gap``),
        level of ``hparam`` and level of the series, in that order of sorting. Columns:
        ``measure``; ``hparam`` (its level); ``series`` (the series hyperparameter, None without
        one); ``series_level`` (its level, None without one); ``mean``; ``std`` (ddof 1, NaN
        when ``count`` is 1); ``count`` (models with a finite value at the level).

    Raises:
        KeyError: If ``hparam`` is not one of :func:`trend_hparams`.
    """
    return _trend(ev, hparam, _series(ev, hparam), [*ev.measures, ev.gap])


def _series(ev: Evaluation, hparam: str) -> str | None:
    """The other axis when :func:`trend_hparams` finds two, checking ``hparam`` is one."""
    axes = trend_hparams(ev)
    if hparam not in axes:
        raise KeyError(
            f"{hparam!r} is not a hyperparameter with 2 or more numeric levels (seeds excluded); "
            f"trend axes: {', '.join(axes) or 'none'}"
        )
    return next(name for name in axes if name != hparam) if len(axes) == 2 else None


def _scope(ev: Evaluation) -> str:
    """Over which models :func:`trend_table` rescales, in words."""
    return "per architecture" if ev.architecture is not None else "over the scored models"


def _rescaled(ev: Evaluation, columns: Sequence[str]) -> pd.DataFrame:
    """The scored models' ``columns`` min-max rescaled to [0, 1] per architecture (NaN kept)."""
    scored = ev.scored.reset_index(drop=True)
    values = scored[list(columns)].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    values = values.where(np.isfinite(values))
    architecture = (
        scored[ev.architecture] if ev.architecture is not None else pd.Series(0, index=scored.index)
    )
    groups = values.groupby(architecture, dropna=False)
    low, span = groups.transform("min"), groups.transform("max") - groups.transform("min")
    return ((values - low) / span.where(span > 0)).where(span > 0, 0.0).where(values.notna())


def _trend(ev: Evaluation, hparam: str, series: str | None, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of :func:`trend_table` for ``columns``, split by ``series`` unless None."""
    scored = ev.scored.reset_index(drop=True)
    keys = [scored[hparam]] if series is None else [scored[hparam], scored[series]]
    grouped = _rescaled(ev, columns).groupby(keys, sort=True)
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    levels = mean.index.to_frame(index=False)
    parts = [
        pd.DataFrame(
            {
                "measure": column,
                hparam: levels.iloc[:, 0],
                "series": series,
                "series_level": levels.iloc[:, 1] if series is not None else None,
                "mean": mean[column].to_numpy(),
                "std": std[column].to_numpy(),
                "count": count[column].to_numpy(dtype=np.int64),
            }
        )
        for column in columns
    ]
    return pd.concat(parts, ignore_index=True)


def _annotated(
    table: pd.DataFrame, baselines: Sequence[str], *, decimals: int, caption: str, label: str
) -> pd.DataFrame:
    """``table`` with what the writers read in its ``attrs``: baseline rows, decimals, caption."""
    table.attrs = {
        BASELINES_ATTR: tuple(row for row in baselines if row in table.index),
        DECIMALS_ATTR: decimals,
        CAPTION_ATTR: caption,
        LABEL_ATTR: label,
    }
    return table


def _baselines_sentence(ev: Evaluation, *, canonical: bool = True) -> str:
    parts = [
        f"ε-oracles: the gap plus N(0, ε²) noise, scores averaged over {ev.draws} "
        f"draw{'s' if ev.draws != 1 else ''} (seed {ev.seed})"
    ]
    if canonical:
        parts.append("canonical ordering: ψ of each type's believed order, only for its own type")
    parts.append("random: a random measure")
    return "Baselines below the measures (Jiang et al. 2020, section 4.1, table 1): " + (
        "; ".join(parts) + "."
    )


# --------------------------------------------------------------------------------------------
# Cells and writers


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
    headers = [str(df.index.name or "measure"), *map(str, df.columns)]
    numeric = [True] + [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    columns = [df.iloc[:, j].tolist() for j in range(df.shape[1])]  # each keeps its own type
    rows = [
        (str(label), [format_number(column[i], places) for column in columns])
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
        decimals: Decimals of real numbers; None: ``df.attrs["decimals"]`` or 3.
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
        decimals: Decimals of real numbers; None: ``df.attrs["decimals"]`` or 3.
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
        decimals: Decimals of real numbers; None: ``df.attrs["decimals"]`` or 3.
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


def format_summary(ev: Evaluation, *, name_width: int = NAME_WIDTH) -> str:
    """The compact table printed after a study: τ, Ψ and K of every measure and baseline.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        name_width: Longest row label shown; longer ones are cut with ``…``.

    Returns:
        A first line stating that τ is Kendall's τ-a and how many models were scored and
        excluded, then one line per measure, a rule, one line per oracle and the random
        measure (at most ``name_width + 30`` characters wide; missing values read ``N/A``), and
        a last line with the canonical orderings' ψ of their own types.
    """
    width = max(len("measure"), min(name_width, max((len(r) for r in ev.ranks.index), default=0)))
    line = f"{{:<{width}}}  {{:>8}}  {{:>8}}  {{:>8}}"

    def row(name: str) -> str:
        tau = ev.ranks.at[name, "tau"] if name in ev.ranks.index else np.nan
        psi = ev.ranks.at[name, "Psi"] if name in ev.ranks.index else np.nan
        k = ev.cmi.at[name, "K"] if name in ev.cmi.index else np.nan
        cells = [format_number(v, d) or "N/A" for v, d in ((tau, 3), (psi, 3), (k, 4))]
        return line.format(_shorten(name, width), *cells)

    head = (
        f"{TAU_A}. {ev.models} models scored, {ev.excluded} excluded (not finished)"
        + (f", measures with NaN values: {len(ev.dropped)}" if ev.dropped else "")
        + "."
    )
    lines = [head, line.format("measure", "τ", "Ψ", "K")]
    measures = [m for m in ev.ranks.index if m not in ev.baselines]
    lines += [row(name) for name in measures]
    lines.append("-" * len(lines[1]))
    lines += [
        row(name)
        for name in ev.baselines
        if name != CANONICAL_ROW and (name in ev.ranks.index or name in ev.cmi.index)
    ]
    if CANONICAL_ROW in ev.ranks.index:
        own = ev.ranks.loc[CANONICAL_ROW, list(ev.hparams)].dropna()
        scores = ", ".join(f"{name} {value:.3f}" for name, value in own.items())
        lines.append(f"{CANONICAL_ROW} (ψ of each type's own order): {scores or 'N/A'}")
    return "\n".join(lines)


def _shorten(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


# --------------------------------------------------------------------------------------------
# Figures


def _new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A figure with its own Agg canvas: pyplot and the global backend are left alone."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _grid_margins(
    figure: Figure,
    nrows: int,
    ncols: int,
    *,
    left: float = 0.75,
    right: float = 0.15,
    bottom: float = 0.5,
    top: float = 0.6,
    wgap: float = 0.2,
    hgap: float = 0.8,
) -> None:
    """Fixed margins in inches: a regular grid needs no (slow) constrained layout."""
    width, height = figure.get_size_inches()
    panel_w = (width - left - right - (ncols - 1) * wgap) / ncols
    panel_h = (height - top - bottom - (nrows - 1) * hgap) / nrows
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wgap / panel_w,
        hspace=hgap / panel_h,
    )


def figure_png(figure: Figure, *, dpi: int = DPI, colors: int | None = 64) -> bytes:
    """The figure as PNG bytes; the figure is cleared afterwards to free its artists.

    Args:
        figure: A figure of this module (or any figure with a canvas).
        dpi: Resolution.
        colors: Quantize to a palette of this many colours (about a third of the bytes, so a
            page with ~40 scatter figures stays small); None keeps matplotlib's RGBA PNG.
    """
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi)
    finally:
        figure.clear()
    if colors is None:
        return buffer.getvalue()
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    small = io.BytesIO()
    palette.save(small, format="png", optimize=True)
    return small.getvalue()


def _mpl_text(text: str) -> str:
    """Text that matplotlib shows verbatim (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _level_text(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _sorted_levels(values: pd.Series) -> list[Any]:
    levels = list(pd.unique(values.dropna()))
    try:
        return sorted(levels)
    except TypeError:
        return sorted(levels, key=str)


def _palette(count: int) -> list[Any]:
    if count <= 10:
        return [mpl.colormaps["tab10"](i) for i in range(count)]
    cmap = mpl.colormaps["viridis"]
    return [cmap(i / max(1, count - 1)) for i in range(count)]


def _score_text(value: Any) -> str:
    return format_number(value, 3) or "N/A"


def scatter_figure(ev: Evaluation, measure: str) -> Figure:
    """A measure (y) against the gap (x), a panel per hyperparameter type.

    In each panel the points are coloured by that type's value (a categorical legend, values
    sorted), as the scatter plots of Tsuzuku et al. 2020 (appendix N.1) and Jiang et al. 2020
    (figure 2). Only the scored models are drawn (finished, finite measure and gap). The y axis
    is logarithmic when the measure is positive and spans more than two decades.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        measure: One of ``ev.measures``.

    Returns:
        The figure (own Agg canvas; see :func:`figure_png`).

    Raises:
        KeyError: If ``measure`` was not scored.
    """
    if measure not in ev.measures:
        raise KeyError(f"measure {measure!r} was not scored; scored: {', '.join(ev.measures)}")
    finished = ev.scored
    mu = pd.to_numeric(finished[measure], errors="coerce").to_numpy(dtype=np.float64)
    gap = pd.to_numeric(finished[ev.gap], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(mu) & np.isfinite(gap)
    rows, mu, gap = finished[keep], mu[keep], gap[keep]
    types: Sequence[str | None] = ev.hparams or (None,)
    ncols = min(len(types), 4)
    nrows = math.ceil(len(types) / ncols)
    figure = _new_figure(2.4 * ncols + 0.9, 2.5 * nrows + 0.3, constrained=False)
    _grid_margins(figure, nrows, ncols)
    axes = figure.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    # One draw order for every panel, shuffled so no value's points hide the others'.
    order = np.random.default_rng(0).permutation(len(mu))
    for ax, name in zip(axes.flat, types, strict=False):
        if name is None:
            ax.scatter(gap, mu, s=8, alpha=0.8, edgecolors="none")
            continue
        values = rows[name].to_numpy()
        levels = _sorted_levels(rows[name])
        palette = _palette(len(levels))
        colors = np.zeros((len(mu), 4))
        for level, color in zip(levels, palette, strict=True):
            colors[values == level] = color
        ax.scatter(gap[order], mu[order], s=8, c=colors[order], alpha=0.8, edgecolors="none")
        handles = [
            Line2D([], [], marker="o", linestyle="", markersize=4, color=color, label=label)
            for color, label in zip(
                palette, (_mpl_text(_level_text(v)) for v in levels), strict=True
            )
        ]
        psi = ev.ranks.at[measure, name] if name in ev.ranks.columns else np.nan
        ax.set_title(_mpl_text(f"{name}: ψ = {_score_text(psi)}"), fontsize=9)
        ax.legend(
            handles=handles,
            title=_mpl_text(name),
            fontsize=6,
            title_fontsize=7,
            ncols=2 if len(levels) > 6 else 1,
            framealpha=0.6,
        )
    for ax in axes.flat[len(types) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(_mpl_text(_shorten(measure, NAME_WIDTH)), fontsize=8)
    for ax in axes.flat:
        ax.set_xlabel("generalization gap", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=True)
    positive = mu[mu > 0]
    if len(positive) == len(mu) and len(mu) and positive.max() > 100 * positive.min():
        axes[0, 0].set_yscale("log")
        # Minor ticks on shared log axes double the drawing time; the decades suffice.
        axes[0, 0].yaxis.set_minor_locator(NullLocator())
    tau, psi_all = ev.ranks.at[measure, "tau"], ev.ranks.at[measure, "Psi"]
    figure.suptitle(
        _mpl_text(f"{measure}   (τ = {_score_text(tau)}, Ψ = {_score_text(psi_all)})"),
        fontsize=10,
    )
    return figure


def scores_figure(ev: Evaluation) -> Figure:
    """Ψ and K of each measure as bars, sorted, next to the baselines' levels.

    Two panels (Jiang et al. 2020, tables 5-6 as bars): the measures sorted by their value,
    with a reference line at each ε-oracle's level (labelled ``oracle 0.01``, ...) and at the
    random measure's. Bars are horizontal so that long measure names stay readable; the
    reference levels are therefore vertical lines.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        The figure (own Agg canvas; see :func:`figure_png`).
    """
    count = len(ev.measures)
    figure = _new_figure(10.0, 1.4 + 0.2 * max(count, 3))
    axes = figure.subplots(1, 2)
    panels = (("Ψ", ev.ranks["Psi"], 3), ("K", ev.cmi["K"], 4))
    references = [(oracle_row(e), f"oracle {e:g}") for e in ev.epsilons] + [(RANDOM_ROW, "random")]
    styles = ["--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1))]
    for ax, (symbol, column, places) in zip(axes, panels, strict=True):
        values = pd.to_numeric(column.reindex(list(ev.measures)), errors="coerce")
        ordered = values.sort_values(na_position="first")
        positions = np.arange(len(ordered))
        ax.barh(positions, ordered.fillna(0.0).to_numpy(), color="#4c72b0", height=0.7)
        labels = [_mpl_text(_shorten(str(n), NAME_WIDTH)) for n in ordered.index]
        ax.set_yticks(positions, labels=labels, fontsize=7)
        for y, value in zip(positions, ordered.to_numpy(), strict=True):
            if not np.isfinite(value):
                ax.text(0, y, " N/A", va="center", fontsize=6, color="#777")
        colors = _palette(len(references))
        for k, (row, name) in enumerate(references):
            level = column.get(row, np.nan)
            if row != RANDOM_ROW and not np.isfinite(level):
                continue
            if np.isfinite(level):
                ax.axvline(
                    level,
                    color="#888" if row == RANDOM_ROW else colors[k],
                    linestyle=styles[k % len(styles)],
                    linewidth=1.1,
                    label=f"{name} ({format_number(level, places)})",
                )
        ax.axvline(0.0, color="black", linewidth=0.6)
        ax.set_ylim(-0.7, len(ordered) - 0.3)
        ax.set_title(f"{symbol} per measure", fontsize=10)
        ax.set_xlabel(symbol, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right", framealpha=0.8)
    figure.suptitle(f"Ψ and K per measure ({TAU_A})", fontsize=10)
    return figure


def _population_parts(ev: Evaluation) -> tuple[bool, bool]:
    columns = ev.population.columns
    return "train_error" in columns, "train_ce" in columns


def population_notes(ev: Evaluation) -> list[str]:
    """Sentences on the population summary: what it shows and which panels are skipped.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        One sentence per skipped panel (a table without ``train_error`` or ``train_ce``, as a
        CSV from elsewhere may be) and the count of models that fit their training set.
    """
    has_error, has_ce = _population_parts(ev)
    total = len(ev.population)
    notes = []
    if has_error:
        error = pd.to_numeric(ev.population["train_error"], errors="coerce")
        fitted = int((error < FIT_ERROR).sum())
        notes.append(
            f"{fitted} of the {total} models in the table (finished or not) reached a training "
            f"accuracy above {100 * (1 - FIT_ERROR):g}% (train_error < {FIT_ERROR:g})."
        )
    else:
        notes.append(
            "The population summary has no panel of models above 99% training accuracy: the "
            "table has no train_error column."
        )
    if not has_ce:
        notes.append(
            "The population summary has no histogram of the training cross-entropy: the table "
            "has no train_ce column."
        )
    return notes


def population_figure(ev: Evaluation) -> Figure:
    """The population summary of Jiang et al. 2020, figure 1.

    Panels: for each hyperparameter type, the number of models per value with training
    accuracy above 99% (``train_error < 0.01``) over every model of the table, finished or not,
    next to the number of models with that value; the histogram of the final training
    cross-entropy (``train_ce``) of every model; the histogram of the gap of the finished models.
    Panels whose column the table lacks are skipped (:func:`population_notes` says which).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.

    Returns:
        The figure (own Agg canvas; see :func:`figure_png`).
    """
    population = ev.population
    has_error, has_ce = _population_parts(ev)
    panels: list[Callable[[Axes], None]] = []
    if has_error:
        fitted = pd.to_numeric(population["train_error"], errors="coerce") < FIT_ERROR
        for name in ev.hparams:
            panels.append(_fit_panel(population[name], fitted, name))
    if has_ce:
        ce = pd.to_numeric(population["train_ce"], errors="coerce").to_numpy(dtype=np.float64)
        panels.append(
            _histogram_panel(
                ce[np.isfinite(ce)], "training cross-entropy", f"all {len(population)} models"
            )
        )
    gap = pd.to_numeric(ev.scored[ev.gap], errors="coerce").to_numpy(dtype=np.float64)
    panels.append(
        _histogram_panel(gap, "generalization gap", f"{len(gap)} finished models", "#55a868")
    )
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    figure = _new_figure(2.8 * ncols + 0.3, 2.4 * nrows + 0.5)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    for k, (ax, draw) in enumerate(zip(axes.flat, panels, strict=False)):
        draw(ax)
        ax.tick_params(labelsize=7)
        if k == 0 and has_error and ev.hparams:
            ax.legend(fontsize=6, loc="upper center", ncols=2, framealpha=0.8)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle("Population (Jiang et al. 2020, figure 1)", fontsize=10)
    return figure


def _fit_panel(values: pd.Series, fitted: pd.Series, name: str) -> Callable[[Axes], None]:
    def draw(ax: Axes) -> None:
        levels = _sorted_levels(values)
        positions = np.arange(len(levels))
        totals = [int((values == level).sum()) for level in levels]
        reached = [int(((values == level) & fitted).sum()) for level in levels]
        ax.bar(positions, totals, color="#dddddd", label="models", width=0.7)
        ax.bar(positions, reached, color="#4c72b0", label="train acc. > 99%", width=0.5)
        ax.set_xticks(positions, labels=[_mpl_text(_level_text(v)) for v in levels], fontsize=7)
        ax.set_ylim(0, 1.3 * max(totals, default=1))
        ax.set_title(_mpl_text(name), fontsize=9)
        ax.set_ylabel("models", fontsize=8)

    return draw


def _histogram_panel(
    values: np.ndarray, label: str, subtitle: str, color: str = "#4c72b0"
) -> Callable[[Axes], None]:
    def draw(ax: Axes) -> None:
        finite = values[np.isfinite(values)]
        if len(finite):
            ax.hist(finite, bins=min(30, max(5, len(finite) // 3)), color=color)
        ax.set_title(f"{label}\n({subtitle})", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("models", fontsize=8)

    return draw


def trend_figure(ev: Evaluation, hparam: str, measures: Sequence[str] | None = None) -> Figure:
    """Each measure against a hyperparameter, rescaled (Tsuzuku et al. 2020, figures 1-2).

    One panel per measure, as the paper's figure 1 (normalized sharpness, Hessian trace and
    param-norm against the fraction of random labels) and figure 2 (against width, one line
    per depth; against depth, one line per width): x is the levels of ``hparam`` (logarithmic
    when positive and spanning :data:`LOG_SPAN` or more), y the mean of :func:`trend_table`
    with a ± std band, one line per level of the series with a legend above the panels. The gap,
    rescaled the same way and averaged over every model at each level, is a thin gray dashed
    reference line in every panel.

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        hparam: One of :func:`trend_hparams`.
        measures: The panels, in order; None: every one of ``ev.measures``.

    Returns:
        The figure (own Agg canvas; see :func:`figure_png`).

    Raises:
        KeyError: If ``hparam`` is not one of :func:`trend_hparams` or a measure was not scored.
        ValueError: If ``measures`` is empty.
    """
    series = _series(ev, hparam)
    chosen = tuple(ev.measures if measures is None else measures)
    unknown = [name for name in chosen if name not in ev.measures]
    if unknown:
        raise KeyError(f"measures {unknown} were not scored; scored: {', '.join(ev.measures)}")
    if not chosen:
        raise ValueError("trend_figure needs at least one measure; got measures=[]")
    table = _trend(ev, hparam, series, chosen)
    gap = _trend(ev, hparam, None, [ev.gap])
    ticks = _sorted_levels(ev.scored[hparam])
    levels = np.asarray(ticks, dtype=np.float64)
    lines = _sorted_levels(ev.scored[series]) if series is not None else [None]
    palette = _palette(len(lines)) if series is not None else ["#4c72b0"]

    handles = [
        Line2D([], [], color=color, marker="o", markersize=3, linewidth=1.3, label=label)
        for color, label in zip(
            palette,
            [_mpl_text(f"{series} = {_level_text(v)}") for v in lines]
            if series is not None
            else ["mean ± std"],
            strict=True,
        )
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="#777",
            linestyle="--",
            linewidth=0.9,
            label=_mpl_text(f"{ev.gap}, all models"),
        )
    )
    legend_columns = min(len(handles), 8)
    legend_rows = math.ceil(len(handles) / legend_columns)

    ncols = min(len(chosen), TREND_PANELS_PER_ROW)
    nrows = math.ceil(len(chosen) / ncols)
    top, bottom, hgap = 0.9 + 0.2 * legend_rows, 0.5, 0.55
    width = max(5.5, 0.75 + 2.15 * ncols + 0.2 * (ncols - 1))
    height = top + bottom + 1.75 * nrows + hgap * (nrows - 1)
    figure = _new_figure(width, height, constrained=False)
    _grid_margins(figure, nrows, ncols, left=0.6, top=top, bottom=bottom, hgap=hgap)
    # Limits set before drawing on unshared axes: shared autoscaling of ~50 panels is slow.
    axes = figure.subplots(nrows, ncols, squeeze=False)
    log = bool(levels.min() > 0 and levels.max() >= LOG_SPAN * levels.min())
    reference = gap[np.isfinite(gap["mean"].to_numpy(dtype=np.float64))]
    for k, (ax, measure) in enumerate(zip(axes.flat, chosen, strict=False)):
        _trend_axes(ax, levels, [_level_text(v) for v in ticks], log=log)
        ax.tick_params(labelsize=7, labelleft=k % ncols == 0)
        rows = table[table["measure"] == measure]
        for level, color in zip(lines, palette, strict=True):
            line = rows if series is None else rows[rows["series_level"] == level]
            line = line[np.isfinite(line["mean"].to_numpy(dtype=np.float64))]
            x = line[hparam].to_numpy(dtype=np.float64)
            mean = line["mean"].to_numpy(dtype=np.float64)
            spread = np.nan_to_num(line["std"].to_numpy(dtype=np.float64))
            ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.15, lw=0)
            ax.plot(x, mean, color=color, marker="o", markersize=3, linewidth=1.3)
        ax.plot(
            reference[hparam].to_numpy(dtype=np.float64),
            reference["mean"].to_numpy(dtype=np.float64),
            color="#777",
            linestyle="--",
            linewidth=0.9,
            zorder=1,
        )
        ax.set_title(_mpl_text(_shorten(measure, TREND_NAME_WIDTH)), fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel("rescaled", fontsize=8)
        if k + ncols >= len(chosen):  # the lowest panel of its column
            ax.set_xlabel(_mpl_text(hparam), fontsize=8)
    for ax in axes.flat[len(chosen) :]:
        ax.set_visible(False)
    figure.suptitle(
        _mpl_text(
            f"Measures against {hparam}   (Tsuzuku et al. 2020, figures 1-2)\n"
            f"rescaled to [0, 1] {_scope(ev)}, mean ± std over the models at each level"
        ),
        fontsize=9,
        y=1 - 0.06 / height,
        va="top",
    )
    figure.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.45 / height),
        ncols=legend_columns,
        fontsize=7,
        frameon=False,
    )
    return figure


def _trend_axes(ax: Axes, levels: np.ndarray, labels: Sequence[str], *, log: bool) -> None:
    """Fix a trend panel's scales, limits and ticks, and turn its autoscaling off."""
    low, high = float(levels.min()), float(levels.max())
    if log:
        ax.set_xscale("log")
        pad = (high / low) ** 0.05
        ax.set_xlim(low / pad, high * pad)
    else:
        ax.set_xlim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    if len(levels) <= 6:
        ax.set_xticks(levels, labels=labels)
    if log:
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([0.0, 0.5, 1.0])
    ax.set_autoscale_on(False)


# --------------------------------------------------------------------------------------------
# The report folder


def slugify(name: str) -> str:
    """A file-name-safe version of ``name``: lowercase ``[a-z0-9._-]``, at most 60 characters."""
    slug = _SLUG_BAD.sub("-", name.lower()).strip("-.")
    return slug[:60].rstrip("-.") or "measure"


def figure_names(measures: Sequence[str], *, prefix: str = "scatter") -> dict[str, str]:
    """A unique, file-name-safe PNG name for each measure's scatter (or trend) figure.

    Names that collide after :func:`slugify` (``a/b`` and ``a b``) get ``-2``, ``-3``, ...;
    the names never collide with the report's other figures.

    Args:
        measures: The measures (or, with ``prefix="trend"``, the hyperparameters of
            :func:`trend_figure`).
        prefix: The names' first word: ``scatter-<measure>.png``, ``trend-<hparam>.png``.
    """
    taken = {"scores.png", "population.png"}
    names: dict[str, str] = {}
    for measure in measures:
        stem = f"{prefix}-{slugify(measure)}"
        candidate, k = f"{stem}.png", 1
        while candidate in taken:
            k += 1
            candidate = f"{stem}-{k}.png"
        taken.add(candidate)
        names[measure] = candidate
    return names


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


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
    return json.dumps(_json_value(content), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


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
""".strip()


def _html_page(
    title: str,
    description: str,
    ev: Evaluation,
    tables: Sequence[tuple[str, pd.DataFrame]],
    figures: Sequence[tuple[str, str, bytes]],
    population: Sequence[str],
) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    if description:
        body.append(f'<p class="description">{esc(description)}</p>')
    body.append(f"<p>{esc(_models_sentence(ev))}</p>")
    if ev.notes:
        body.append("<h2>Notes</h2>")
        body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in ev.notes) + "</ul>")
    for heading, table in tables:
        body.append(f"<h2>{esc(heading)}</h2>")
        body.append(to_html(table))
    body.append("<h2>Figures</h2>")
    if population:
        body.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in population) + "</ul>")
    for caption, _, png in figures:
        data = base64.b64encode(png).decode("ascii")
        body.append(
            f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
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
    figures: Sequence[tuple[str, str, bytes]],
    population: Sequence[str],
) -> str:
    lines = [f"# {_markdown_text(title)}", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [_markdown_text(_models_sentence(ev)), ""]
    if ev.notes:
        lines += ["## Notes", "", *(f"- {_markdown_text(n)}" for n in ev.notes), ""]
    for heading, table in tables:
        lines += [f"## {heading}", "", to_markdown(table)]
    lines += ["## Figures", ""]
    if population:
        lines += [*(f"- {_markdown_text(n)}" for n in population), ""]
    for caption, path, _ in figures:
        lines += [f"![{_markdown_text(caption)}]({path})", "", f"*{_markdown_text(caption)}*", ""]
    return "\n".join(lines)


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


def _trend_caption(ev: Evaluation, hparam: str) -> str:
    series = _series(ev, hparam)
    lines = f", one line per {series}" if series is not None else ""
    return (
        f"Measures against {hparam}, rescaled to [0, 1] {_scope(ev)}, mean ± std{lines}; dashed "
        f"gray: the rescaled {ev.gap} (Tsuzuku et al. 2020, figures 1-2)"
    )


def write_report(
    ev: Evaluation, folder: str | os.PathLike[str], *, title: str, description: str = ""
) -> Path:
    """Write the tables, figures and pages of an evaluation into ``folder``.

    Files (``folder`` and ``figures/`` are created if missing; each file is written to a
    temporary name and renamed, so a crash never leaves one half-written, and the pages are
    written last):

    - ``ranks.csv``, ``cmi.csv``, ``pearson.csv``: :func:`rank_table`, :func:`cmi_table`,
      :func:`pearson_table` at full precision, missing values empty;
    - ``ranks.tex``, ``cmi.tex``, ``pearson.tex``: the same as LaTeX tables (:func:`to_latex`);
    - ``figures/scores.png`` (:func:`scores_figure`), ``figures/population.png``
      (:func:`population_figure`), ``figures/trend-<hparam>.png`` per hyperparameter of
      :func:`trend_hparams` (:func:`trend_figure`, Tsuzuku et al. 2020, figures 1-2) and
      ``figures/scatter-<measure>.png`` per measure (:func:`scatter_figure`; names from
      :func:`figure_names`), in that order in the pages;
    - ``trends.csv``: :func:`trends_csv`, the :func:`trend_table` of every hyperparameter of
      :func:`trend_hparams` in long format (columns ``hparam, measure, level, series,
      series_level, mean, std, count``);
    - ``summary.json``: :func:`summary_json`;
    - ``report.md``: title, description, the models scored and excluded, the notes, the three
      tables with captions and the figures as image links;
    - ``report.html``: the same, self-contained (inline CSS, images as base64 data URIs).

    Args:
        ev: The scores, from :func:`~genmeasures.evaluate.scoring.score_table`.
        folder: The output folder.
        title: The pages' title.
        description: Text under the title (Markdown in ``report.md``, plain text in HTML).

    Returns:
        The path of ``report.md``.
    """
    root = Path(folder)
    figures_dir = root / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    tables = [
        ("Rank correlation (Jiang et al. 2020, table 5)", "ranks", rank_table(ev)),
        ("Conditional mutual information (Jiang et al. 2020, table 6)", "cmi", cmi_table(ev)),
        ("Pearson correlation (Tsuzuku et al. 2020, tables 1-2)", "pearson", pearson_table(ev)),
    ]
    for _, stem, table in tables:
        _write_atomic(root / f"{stem}.csv", to_csv(table))
        _write_atomic(root / f"{stem}.tex", to_latex(table))
    _write_atomic(root / "trends.csv", trends_csv(ev))

    figures: list[tuple[str, str, bytes]] = []

    def add(caption: str, name: str, figure: Figure) -> None:
        png = figure_png(figure)
        _write_atomic(figures_dir / name, png)
        figures.append((caption, f"figures/{name}", png))

    add("Ψ and K per measure, with the oracle and random levels", "scores.png", scores_figure(ev))
    add("Population summary (Jiang et al. 2020, figure 1)", "population.png", population_figure(ev))
    for hparam, name in figure_names(trend_hparams(ev), prefix="trend").items():
        add(_trend_caption(ev, hparam), name, trend_figure(ev, hparam))
    for measure, name in figure_names(ev.measures).items():
        add(f"{measure} against the generalization gap", name, scatter_figure(ev, measure))

    population = population_notes(ev)
    _write_atomic(root / "summary.json", summary_json(ev, title=title, description=description))
    pairs = [(heading, table) for heading, _, table in tables]
    page = (title, description, ev, pairs, figures, population)
    _write_atomic(root / "report.md", _markdown_page(*page))
    _write_atomic(root / "report.html", _html_page(*page))
    return root / "report.md"
