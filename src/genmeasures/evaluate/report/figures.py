"""The report's figures (``EVALUATION.md``, "Output").

Each measure against the gap coloured by hyperparameter (:func:`scatter_figure`), Ψ and K per
measure next to the baselines (:func:`scores_figure`), the population summary of Jiang et al.
2020, figure 1 (:func:`population_figure`) and each measure against a hyperparameter, rescaled,
as small multiples (:func:`trend_figure`; Tsuzuku et al. 2020, figures 1-2).

Figures are drawn on :class:`matplotlib.figure.Figure` objects with their own Agg canvas, so
nothing here touches pyplot's global state or the caller's backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
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

from genmeasures.evaluate.report.formats import NAME_WIDTH, _shorten, format_number
from genmeasures.evaluate.report.tables import (
    FIT_ERROR,
    TAU_A,
    _population_parts,
    _scope,
    _series,
    _trend,
)
from genmeasures.evaluate.scoring import RANDOM_ROW, Evaluation, oracle_row

#: Resolution of every PNG written: ~40 scatter figures stay a few MB in the HTML page.
DPI = 100

#: A trend's x axis is logarithmic when its levels are positive and the largest is at least this
#: many times the smallest (widths 32 to 2048, Tsuzuku et al. 2020, figure 2).
LOG_SPAN = 8.0

#: Panels per row of :func:`trend_figure`, and the longest measure name in a panel's title:
#: five panels keep ~50 measures legible 1250 pixels wide.
TREND_PANELS_PER_ROW, TREND_NAME_WIDTH = 5, 34


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
    (figure 2). Only the scored models are drawn (finished, finite measure and gap); values that
    did not converge (``ev.unconverged``) are crosses, counted in the title. The y axis is
    logarithmic when the measure is positive and spans more than two decades.

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
    # Values that did not converge are drawn as crosses, wherever they are.
    cross = np.asarray(rows.index.isin(ev.unconverged.get(measure, ())))
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
            ax.scatter(gap[~cross], mu[~cross], s=8, alpha=0.8, edgecolors="none")
            ax.scatter(gap[cross], mu[cross], s=14, marker="x", linewidths=0.8)
            continue
        values = rows[name].to_numpy()
        levels = _sorted_levels(rows[name])
        palette = _palette(len(levels))
        colors = np.zeros((len(mu), 4))
        for level, color in zip(levels, palette, strict=True):
            colors[values == level] = color
        dots, crosses = order[~cross[order]], order[cross[order]]
        ax.scatter(gap[dots], mu[dots], s=8, c=colors[dots], alpha=0.8, edgecolors="none")
        ax.scatter(gap[crosses], mu[crosses], s=14, c=colors[crosses], marker="x", linewidths=0.8)
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
    flagged = f"; × did not converge: {int(cross.sum())}" if cross.any() else ""
    figure.suptitle(
        _mpl_text(f"{measure}   (τ = {_score_text(tau)}, Ψ = {_score_text(psi_all)}{flagged})"),
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
