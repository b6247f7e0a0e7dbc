"""The report folder: :func:`write_report` writes every table, figure and page of an evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure

from genmeasures.errors import ReportError
from genmeasures.evaluate.report.figures import (
    figure_png,
    population_figure,
    scatter_figure,
    scores_figure,
    trend_figure,
)
from genmeasures.evaluate.report.files import (
    FIGURES_FOLDER,
    _write_atomic,
    figure_names,
    replacing,
)
from genmeasures.evaluate.report.formats import summary_json, to_csv, to_latex, trends_csv
from genmeasures.evaluate.report.pages import FigureSection, _html_page, _markdown_page
from genmeasures.evaluate.report.robust_figures import environment_cdf_figure, worst_case_figure
from genmeasures.evaluate.report.tables import (
    _scope,
    _series,
    cmi_table,
    pearson_table,
    population_notes,
    rank_table,
    robust_table,
    trend_hparams,
)
from genmeasures.evaluate.robust import ALL_TYPES
from genmeasures.evaluate.scoring import Evaluation
from genmeasures.pool import check_workers, completed_in_pool

#: Figures per worker below which drawing them in this process is quicker than starting workers
#: (a worker imports matplotlib and pandas, about 2 s; a scatter figure takes about 0.4 s).
MIN_FIGURES_PER_WORKER = 10

#: The files :func:`write_report` writes into its folder, besides the figures.
REPORT_FILES = frozenset(
    {
        *(
            f"{stem}.{suffix}"
            for stem in ("ranks", "cmi", "pearson", "robust")
            for suffix in ("csv", "tex")
        ),
        "trends.csv",
        "summary.json",
        "report.md",
        "report.html",
    }
)


def _trend_caption(ev: Evaluation, hparam: str) -> str:
    series = _series(ev, hparam)
    lines = f", one line per {series}" if series is not None else ""
    return (
        f"Measures against {hparam}, rescaled to [0, 1] {_scope(ev)}, mean ± std{lines}; dashed "
        f"gray: the rescaled {ev.gap} (Tsuzuku et al. 2020, figures 1-2)"
    )


def write_report(
    ev: Evaluation,
    folder: str | os.PathLike[str],
    *,
    title: str,
    description: str = "",
    workers: int = 1,
) -> Path:
    """Write the tables, figures and pages of an evaluation into ``folder``.

    The report is written into a new folder beside ``folder`` that then replaces ``folder`` as
    a whole (:func:`~genmeasures.evaluate.report.files.replacing`): a kill at any point leaves
    the previous report or the new one, never a mix, and no file of the previous report (e.g.
    the figure of a measure no longer scored) survives. ``folder`` may be missing (it is
    created, with its parents), empty or a previous report; a folder holding anything else is
    refused rather than deleted. Files:

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
        workers: Processes that draw the figures (1: this process); the figures are the
            same bytes either way.

    Returns:
        The path of ``report.md``.

    Raises:
        EvaluationError: if ``folder`` holds files that a report does not write, or cannot be
            created.
        ReportError: for a worker count that is not a positive int.
        WorkerError: if a drawing worker process died.
    """
    check_workers(workers, ReportError)
    with replacing(Path(folder), REPORT_FILES) as staging:
        _write_files(ev, staging, title=title, description=description, workers=workers)
    return Path(folder) / "report.md"


#: The figures of a report, by kind: each drawn from the evaluation and at most one subject (a
#: hyperparameter of a trend, a measure of a scatter plot).
_FIGURES: dict[str, Callable[[Evaluation, str | None], Figure]] = {
    "scores": lambda ev, _: scores_figure(ev),
    "population": lambda ev, _: population_figure(ev),
    "trend": lambda ev, hparam: trend_figure(ev, str(hparam)),
    "scatter": lambda ev, measure: scatter_figure(ev, str(measure)),
    "worst": lambda ev, _: worst_case_figure(ev),
    "cdf": lambda ev, hparam: environment_cdf_figure(ev, str(hparam)),
}


#: Figures kept in full colour: a palette of 64 colours merges their few thin coloured lines
#: into the many gray ones.
_FULL_COLOUR = frozenset({"cdf"})


def _figure_png(job: tuple[int, Evaluation, str, str | None]) -> tuple[int, bytes]:
    """Draw one figure of a report as PNG bytes: what a drawing worker does."""
    index, ev, kind, subject = job
    colors = None if kind in _FULL_COLOUR else 64
    return index, figure_png(_FIGURES[kind](ev, subject), colors=colors)


def _draw_figures(
    ev: Evaluation, figures: list[tuple[str, str | None]], workers: int
) -> list[bytes]:
    """The PNG bytes of each ``(kind, subject)`` figure, in order, drawn by ``workers``."""
    jobs = [(index, ev, kind, subject) for index, (kind, subject) in enumerate(figures)]
    if workers == 1 or len(jobs) < MIN_FIGURES_PER_WORKER * workers:
        drawn = map(_figure_png, jobs)
    else:
        pool = completed_in_pool(_figure_png, jobs, workers, "drawing the report's figures")
        drawn = (outcome for _, outcome in pool)
    return [png for _, png in sorted(drawn, key=lambda pair: pair[0])]


def _write_files(ev: Evaluation, root: Path, *, title: str, description: str, workers: int) -> None:
    """Write every file of :func:`write_report` into ``root``, an empty folder."""
    figures_dir = root / FIGURES_FOLDER
    figures_dir.mkdir()
    tables = [
        ("Rank correlation (Jiang et al. 2020, table 5)", "ranks", rank_table(ev)),
        ("Conditional mutual information (Jiang et al. 2020, table 6)", "cmi", cmi_table(ev)),
        ("Pearson correlation (Tsuzuku et al. 2020, tables 1-2)", "pearson", pearson_table(ev)),
    ]
    if ev.robust is not None:
        heading = "Robustness over environments (Dziugaite et al. 2020) and held-out R²"
        tables.append((heading, "robust", robust_table(ev)))
    for _, stem, table in tables:
        _write_atomic(root / f"{stem}.csv", to_csv(table))
        _write_atomic(root / f"{stem}.tex", to_latex(table))
    _write_atomic(root / "trends.csv", trends_csv(ev))

    overview, each_measure = "Scores, population and trends", "Each measure against the gap"
    scores_caption = "Ψ and K per measure, with the oracle and random levels"
    population_caption = "Population summary (Jiang et al. 2020, figure 1)"
    jobs = [
        (overview, scores_caption, "scores.png", "scores", None),
        (overview, population_caption, "population.png", "population", None),
    ]
    for hparam, name in figure_names(trend_hparams(ev), prefix="trend").items():
        jobs.append((overview, _trend_caption(ev, hparam), name, "trend", hparam))
    robustness = "Robustness over environments (Dziugaite et al. 2020)"
    if ev.robust is not None and not ev.robust.environments.empty:
        caption = "Worst environment sign-error of each measure along each type and over all"
        jobs.append((robustness, caption, "robust-worst.png", "worst", None))
        counts = ev.robust.environment_counts
        scopes = [*(name for name in ev.robust.hparams if counts[name][0]), ALL_TYPES]
        for hparam, name in figure_names(scopes, prefix="robust-cdf").items():
            caption = f"Distribution of each measure's environment losses along {hparam}"
            jobs.append((robustness, caption, name, "cdf", hparam))
    for measure, name in figure_names(ev.measures).items():
        caption = f"{measure} against the generalization gap"
        jobs.append((each_measure, caption, name, "scatter", measure))
    pngs = _draw_figures(ev, [(kind, subject) for *_, kind, subject in jobs], workers)
    drawn: dict[str, list[tuple[str, str, bytes]]] = {
        overview: [],
        robustness: [],
        each_measure: [],
    }
    for (section, caption, name, _, _), png in zip(jobs, pngs, strict=True):
        _write_atomic(figures_dir / name, png)
        drawn[section].append((caption, f"{FIGURES_FOLDER}/{name}", png))
    figures = [
        FigureSection(overview, drawn[overview]),
        *([FigureSection(robustness, drawn[robustness])] if drawn[robustness] else []),
        FigureSection(each_measure, drawn[each_measure], folded=True),
    ]

    population = population_notes(ev)
    _write_atomic(root / "summary.json", summary_json(ev, title=title, description=description))
    pairs = [(heading, table) for heading, _, table in tables]
    page = (title, description, ev, pairs, figures, population)
    _write_atomic(root / "report.md", _markdown_page(*page))
    _write_atomic(root / "report.html", _html_page(*page))
