"""Tables, plots and a report of an :class:`~genmeasures.evaluate.scoring.Evaluation`.

The paper's tables (Jiang et al. 2020, tables 5-6; Tsuzuku et al. 2020, tables 1-2) as
DataFrames ready to print, written as Markdown, LaTeX, CSV and HTML; the plots of
``EVALUATION.md`` ("Output"): each measure against the gap coloured by hyperparameter, Ψ and K
per measure next to the baselines, and the population summary of Jiang et al. 2020, figure 1;
how each measure moves along each hyperparameter, rescaled to [0, 1] per architecture, as a
table and small multiples (:func:`trend_table`, :func:`trend_figure`; Tsuzuku et al. 2020,
figures 1-2); and :func:`write_report`, which writes all of them into one folder with a Markdown
and a self-contained HTML page.

Every name is importable from here; the modules hold:

- :mod:`~genmeasures.evaluate.report.tables`: the tables as DataFrames (ranks, CMI, Pearson,
  trends) and the sentences on the population;
- :mod:`~genmeasures.evaluate.report.formats`: the writers (Markdown, LaTeX, HTML, CSV, JSON)
  and :func:`format_summary`, the table printed after a study;
- :mod:`~genmeasures.evaluate.report.figures`: the figures, drawn without pyplot;
- :mod:`~genmeasures.evaluate.report.pages`: ``report.md`` and ``report.html``;
- :mod:`~genmeasures.evaluate.report.robust_figures`: the figures of the robust evaluation;
- :mod:`~genmeasures.evaluate.report.files`: figure file names and atomic writing;
- :mod:`~genmeasures.evaluate.report.destination`: the report folder, checked before any work
  (:func:`check_report_folder`);
- :mod:`~genmeasures.evaluate.report.folder`: :func:`write_report`.
"""

from genmeasures.evaluate.report.destination import check_report_folder
from genmeasures.evaluate.report.figures import (
    DPI,
    LOG_SPAN,
    TREND_NAME_WIDTH,
    TREND_PANELS_PER_ROW,
    figure_png,
    population_figure,
    scatter_figure,
    scores_figure,
    trend_figure,
)
from genmeasures.evaluate.report.files import figure_names, slugify
from genmeasures.evaluate.report.folder import write_report
from genmeasures.evaluate.report.formats import (
    NAME_WIDTH,
    TRENDS_CSV_COLUMNS,
    findings,
    format_number,
    format_summary,
    latex_escape,
    leaderboard,
    ranked_measures,
    summary_json,
    tau_null_sd,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
    trends_csv,
)
from genmeasures.evaluate.report.robust_figures import environment_cdf_figure, worst_case_figure
from genmeasures.evaluate.report.tables import (
    BASELINES_ATTR,
    CAPTION_ATTR,
    DECIMALS_ATTR,
    FIT_ERROR,
    LABEL_ATTR,
    TAU_A,
    TREND_COLUMNS,
    cmi_table,
    pearson_table,
    population_notes,
    rank_table,
    robust_table,
    trend_hparams,
    trend_table,
)

__all__ = [
    "BASELINES_ATTR",
    "CAPTION_ATTR",
    "DECIMALS_ATTR",
    "DPI",
    "FIT_ERROR",
    "LABEL_ATTR",
    "LOG_SPAN",
    "NAME_WIDTH",
    "TAU_A",
    "TRENDS_CSV_COLUMNS",
    "TREND_COLUMNS",
    "TREND_NAME_WIDTH",
    "TREND_PANELS_PER_ROW",
    "check_report_folder",
    "cmi_table",
    "environment_cdf_figure",
    "figure_names",
    "figure_png",
    "findings",
    "format_number",
    "format_summary",
    "latex_escape",
    "leaderboard",
    "pearson_table",
    "population_figure",
    "population_notes",
    "rank_table",
    "ranked_measures",
    "robust_table",
    "scatter_figure",
    "scores_figure",
    "slugify",
    "summary_json",
    "tau_null_sd",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "trend_figure",
    "trend_hparams",
    "trend_table",
    "trends_csv",
    "worst_case_figure",
    "write_report",
]
