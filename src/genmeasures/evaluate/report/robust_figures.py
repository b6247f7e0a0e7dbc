"""The figures of the robust evaluation (Dziugaite et al. 2020, figures 2-4 in style).

- :func:`environment_cdf_figure`: for one hyperparameter type (or every type together), the
  cumulative distribution of the environment losses of every measure: a curve that stays at 0
  until far right fails rarely; one that reaches 1 only at loss 1 has an environment where it
  orders every clear pair backwards.
- :func:`worst_case_figure`: the worst environment loss of each measure along each type, as a
  heat map.

Drawn on figures with their own Agg canvas, like :mod:`~genmeasures.evaluate.report.figures`.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from genmeasures.evaluate.report.figures import _mpl_text, _new_figure
from genmeasures.evaluate.report.formats import NAME_WIDTH, _shorten, ranked_measures
from genmeasures.evaluate.robust import ALL_TYPES, RobustEvaluation
from genmeasures.evaluate.scoring import RANDOM_ROW, Evaluation, oracle_row

#: Measures drawn in colour (and named in the legend) in :func:`environment_cdf_figure`: the
#: best by Ψ; the others are thin gray curves.
HIGHLIGHTED = 5


def _robust(ev: Evaluation) -> RobustEvaluation:
    if ev.robust is None:
        raise ValueError("this evaluation has no robust part: see with_robust_scores")
    return ev.robust


def environment_cdf_figure(ev: Evaluation, hparam: str) -> Figure:
    """The cumulative distribution of each measure's environment losses along one type.

    Args:
        ev: The scores with their robust part.
        hparam: A hyperparameter type of the robust part, or ``"all"`` for every type together.

    Returns:
        One panel: a step curve per measure (the best :data:`HIGHLIGHTED` by Ψ in colour, the
        others gray), the 0.01-oracle dashed and the random measure dotted.

    Raises:
        ValueError: Without a robust part, or for a type it does not have.
    """
    robust = _robust(ev)
    if hparam != ALL_TYPES and hparam not in robust.hparams:
        raise ValueError(f"{hparam!r} is not a type of the robust scores: {robust.hparams}")
    frame = robust.environments
    if hparam != ALL_TYPES:
        frame = frame[frame["type"] == hparam]
    losses = {row: np.sort(group["loss"].to_numpy()) for row, group in frame.groupby("row")}
    figure = _new_figure(7.5, 4.5)
    axes = figure.add_subplot()
    highlighted = [m for m in ranked_measures(ev) if m in losses][:HIGHLIGHTED]
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for name in ev.measures:
        if name in losses and name not in highlighted:
            _step(axes, losses[name], color="0.75", linewidth=0.8, zorder=1)
    for name, color in zip(highlighted, palette, strict=False):
        label = _mpl_text(_shorten(name, NAME_WIDTH))
        _step(axes, losses[name], color=color, linewidth=2, label=label, zorder=3)
    references = [(oracle_row(e), "--", "black") for e in robust.epsilons[:1]]
    references.append((RANDOM_ROW, ":", "tab:red"))
    for name, style, color in references:
        if name in losses:
            _step(axes, losses[name], color=color, linestyle=style, linewidth=1.5, label=name)
    scope = "every type" if hparam == ALL_TYPES else hparam
    kept = len(frame[frame["row"] == RANDOM_ROW]) if RANDOM_ROW in losses else 0
    axes.set_title(f"Environments along {scope} ({kept} kept): sign-error of each measure")
    axes.set_xlabel("environment loss (sign-error)")
    axes.set_ylabel("fraction of environments ≤ loss")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return figure


def _step(axes: Axes, values: np.ndarray, **style: Any) -> None:
    """The empirical CDF of ``values`` from loss 0 to 1."""
    x = np.concatenate([[0.0], values, [1.0]])
    y = np.concatenate([[0.0], np.arange(1, len(values) + 1) / len(values), [1.0]])
    axes.step(x, y, where="post", **style)


def worst_case_figure(ev: Evaluation) -> Figure:
    """The worst environment loss of each measure along each type and over all, as a heat map.

    Rows: the measures ranked by Ψ, then the baselines; columns: the types, then ``"all"``.
    Each cell is written out; gray where the row has no kept environment of that type.

    Raises:
        ValueError: Without a robust part.
    """
    robust = _robust(ev)
    rows = [m for m in ranked_measures(ev) if m in robust.summary.index]
    rows += list(robust.baselines)
    columns = [*robust.hparams, ALL_TYPES]
    worst = np.array(
        [[robust.summary.at[row, (column, "max")] for column in columns] for row in rows],
        dtype=float,
    )
    figure = _new_figure(2.6 + 1.0 * len(columns), 1.2 + 0.22 * len(rows))
    axes = figure.add_subplot()
    cmap = mpl.colormaps["RdYlGn_r"].with_extremes(bad="0.85")
    image = axes.imshow(np.ma.masked_invalid(worst), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    axes.set_yticks(range(len(rows)), [_mpl_text(_shorten(r, NAME_WIDTH)) for r in rows])
    axes.tick_params(labelsize=8)
    for i, j in np.ndindex(worst.shape):
        if np.isfinite(worst[i, j]):
            shade = "white" if abs(worst[i, j] - 0.5) > 0.3 else "black"
            axes.text(j, i, f"{worst[i, j]:.2f}", ha="center", va="center", fontsize=7, color=shade)
    axes.axhline(len(rows) - len(robust.baselines) - 0.5, color="black", linewidth=1.5)
    axes.set_title("Worst environment sign-error (Dziugaite et al. 2020)")
    figure.colorbar(image, ax=axes, shrink=0.6, label="worst environment loss")
    return figure
