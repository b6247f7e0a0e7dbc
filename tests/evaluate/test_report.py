from __future__ import annotations

import base64
import dataclasses
import html
import io
import itertools
import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from genmeasures.evaluate import Evaluation, score_table, with_robust_scores
from genmeasures.evaluate import report as rp
from genmeasures.evaluate.report import files

HPARAMS = ["width", "batch_size", "lr"]
SAFE_NAME = re.compile(r"^[a-z0-9._-]+\.png$")


def make_table(measures: list[str], *, seed: int = 0, train_columns: bool = True) -> pd.DataFrame:
    """A 3 x 3 x 2 grid whose gap falls with width and rises with batch size."""
    rng = np.random.default_rng(seed)
    grid = itertools.product([128, 256, 512], [32, 64, 128], [0.03, 0.0125])
    table = pd.DataFrame(list(grid), columns=HPARAMS)
    trend = 0.3 + 0.0004 * table.batch_size - 0.0002 * table.width - table.lr
    table["gap"] = trend + rng.normal(0, 0.01, len(table))
    for k, name in enumerate(measures):
        if k == 0:
            table[name] = table.gap + rng.normal(0, 0.02, len(table))
        else:
            table[name] = rng.normal(size=len(table))
    if train_columns:
        table["status"] = "done"
        table.loc[[3, 7], "status"] = "failed"
        table["train_error"] = np.where(np.arange(len(table)) % 4 == 0, 0.05, 0.0)
        table["train_ce"] = rng.gamma(2.0, 0.005, len(table))
    return table


def evaluate(table: pd.DataFrame, measures: list[str]) -> Evaluation:
    orders = {"width": "decreasing", "batch_size": "increasing", "lr": "decreasing"}  # appendix C.4
    return score_table(table, measures, hparams=HPARAMS, canonical=orders, draws=2, seed=0)


@pytest.fixture(scope="module")
def ev() -> Evaluation:
    return evaluate(make_table(["m1", "m2"]), ["m1", "m2"])


# Names that need escaping in HTML, Markdown and LaTeX, and two that collide once slugified.
ODD = ["a<b & c/d", "a/b", "a b"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Evaluation, Path]:
    table = make_table(ODD)
    odd = evaluate(table, ODD)
    folder = tmp_path_factory.mktemp("report") / "nested" / "out"
    path = rp.write_report(odd, folder, title="Study <1> & co", description="A *small* grid.")
    assert path == folder / "report.md"
    return odd, folder


# ----------------------------------------------------------------------------------------------
# Tables


def test_rank_table_rows_columns_and_statement(ev: Evaluation) -> None:
    table = rp.rank_table(ev)
    assert list(table.index) == [*ev.measures, *ev.baselines]
    assert list(table.columns) == [*HPARAMS, "τ", "Ψ"]
    assert np.isnan(table.at["canonical ordering", "τ"])
    assert np.isnan(table.at["canonical ordering", "Ψ"])
    assert table.at["m1", "τ"] == ev.ranks.at["m1", "tau"]
    assert "τ-a" in table.attrs["caption"] and "ties count 0" in table.attrs["caption"]
    assert table.attrs["baselines"] == ev.baselines
    # The evaluation's own tables are left as they were.
    assert list(ev.ranks.columns) == [*HPARAMS, "tau", "Psi"]


def test_cmi_and_pearson_tables(ev: Evaluation) -> None:
    cmi = rp.cmi_table(ev)
    assert list(cmi.columns) == [*HPARAMS, "|S|=0", "|S|=1", "|S|=2", "K", "K set"]
    assert "canonical ordering" not in cmi.index
    assert cmi.attrs["baselines"] == tuple(b for b in ev.baselines if b != "canonical ordering")
    assert cmi.attrs["decimals"] == 4
    pearson = rp.pearson_table(ev)
    assert list(pearson.index) == list(ev.measures)
    assert list(pearson.columns) == ["r"]
    assert pearson.attrs["baselines"] == ()


@pytest.mark.parametrize("build", [rp.rank_table, rp.cmi_table, rp.pearson_table])
def test_csv_round_trips(ev: Evaluation, build, tmp_path: Path) -> None:
    table = build(ev)
    path = tmp_path / "table.csv"
    path.write_text(rp.to_csv(table), encoding="utf-8")
    back = pd.read_csv(path, index_col=0, encoding="utf-8")
    assert list(back.index) == list(table.index)
    assert list(back.columns) == list(table.columns)
    for column in table.columns:
        if pd.api.types.is_numeric_dtype(table[column]):
            np.testing.assert_array_equal(back[column].to_numpy(), table[column].to_numpy())
        else:
            assert list(back[column]) == list(table[column])
    # NaN is an empty field, not "N/A" or "nan".
    text = path.read_text(encoding="utf-8")
    assert "N/A" not in text and "nan" not in text.lower()


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_markdown_rank_table(ev: Evaluation) -> None:
    text = rp.to_markdown(rp.rank_table(ev))
    rows = _table_rows(text)
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["measure", *HPARAMS, "τ", "Ψ"]
    assert set(rows[1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    body = rows[2:]
    assert len(body) == len(ev.measures) + len(ev.baselines)
    for name in [*ev.measures, *ev.baselines]:
        assert sum(name in row for row in body) >= 1, name
    canonical = next(row for row in body if "canonical ordering" in row)
    assert canonical.count("N/A") == 2
    m1 = next(row for row in body if row.startswith("| m1 "))
    assert f"{ev.ranks.at['m1', 'tau']:.3f}" in m1
    assert "Kendall τ-a: ties count 0" in text
    # Baselines are set apart from the measures.
    assert "*random*" in text and "*m1*" not in text


def test_the_leaderboard_shows_margins_with_one_decimal_and_k_with_four(ev: Evaluation) -> None:
    board = rp.leaderboard(ev)
    psi, psi_sd, tau, tau_sd, k, _ = board.loc["m1"]
    row = next(row for row in _table_rows(rp.to_markdown(board)) if row.startswith("| m1 "))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    assert cells == [f"{psi:.3f}", f"{psi_sd:.1f}", f"{tau:.3f}", f"{tau_sd:.1f}", f"{k:.4f}", "0"]
    # decimals= overrides every column.
    row = next(r for r in _table_rows(rp.to_markdown(board, decimals=2)) if r.startswith("| m1 "))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    assert cells[1] == f"{psi_sd:.2f}" and cells[4] == f"{k:.2f}"


def test_markdown_cmi_decimals_and_escaping(ev: Evaluation) -> None:
    text = rp.to_markdown(rp.cmi_table(ev))
    m1 = next(row for row in _table_rows(text) if row.startswith("| m1 "))
    assert f"{ev.cmi.at['m1', 'K']:.4f}" in m1
    # | in a header or a name must not split the row.
    header = _table_rows(text)[0]
    assert r"\|S\|=0" in header
    frame = pd.DataFrame({"x": [1.0, np.nan]}, index=["a|b", "c"])
    rows = _table_rows(rp.to_markdown(frame, "caption"))
    assert rows[2].count(" | ") == 1 and r"a\|b" in rows[2]
    assert "N/A" in rows[3]


def test_latex_escapes_and_rule(ev: Evaluation) -> None:
    assert rp.latex_escape("x_y%z#w&v$u{t}") == r"x\_y\%z\#w\&v\$u\{t\}"
    assert rp.latex_escape("1/margin") == "1/margin"
    table = evaluate(make_table(["x_y%z#w", "1/margin"]), ["x_y%z#w", "1/margin"])
    text = rp.to_latex(rp.rank_table(table))
    assert r"x\_y\%z\#w" in text and "x_y%z#w" not in text
    assert r"$\tau$" in text and r"$\Psi$" in text and r"Kendall $\tau$-a" in text
    lines = text.splitlines()
    first_baseline = next(i for i, line in enumerate(lines) if line.startswith("oracle 0.01 &"))
    last_measure = next(i for i, line in enumerate(lines) if line.startswith("1/margin &"))
    assert lines[first_baseline - 1] == r"\midrule"
    assert last_measure == first_baseline - 2
    assert r"\toprule" in lines and r"\bottomrule" in lines
    canonical = next(line for line in lines if line.startswith("canonical ordering &"))
    assert canonical.count("N/A") == 2
    assert lines.count(r"\midrule") == 2  # under the header, above the baselines


def test_format_summary_lists_every_row(ev: Evaluation) -> None:
    long = "a-very-long-measure-name-" * 4
    table = make_table(["m1", long])
    summary_ev = evaluate(table, ["m1", long])
    text = rp.format_summary(summary_ev)
    lines = text.splitlines()
    head = next(line for line in lines if "models scored" in line)
    assert "τ-a" in head
    assert f"{summary_ev.models} models scored" in head
    assert f"{summary_ev.excluded} excluded" in head
    assert max(len(line) for line in lines) <= 100
    for name in ["m1", *summary_ev.baselines]:
        assert any(line.startswith(name + " ") for line in lines), name
    assert any(line.startswith(long[: rp.NAME_WIDTH - 1] + "…") for line in lines)
    canonical = next(line for line in lines if line.startswith("canonical ordering"))
    own = summary_ev.ranks.loc["canonical ordering", list(summary_ev.hparams)]
    assert canonical.endswith(", ".join(f"{name} {value:.3f}" for name, value in own.items()))
    m1 = next(line for line in lines if line.startswith("m1 "))
    tau = summary_ev.ranks.at["m1", "tau"]
    psi = summary_ev.ranks.at["m1", "Psi"]
    assert m1.split()[1:] == [
        f"{psi:.3f}",
        f"{psi / summary_ev.null_psi_sd['m1']:.1f}",
        f"{tau:.3f}",
        f"{tau / rp.tau_null_sd(summary_ev.models):.1f}",
        f"{summary_ev.cmi.at['m1', 'K']:.4f}",
    ]


def test_the_summary_opens_with_the_findings_and_ranks_by_psi() -> None:
    measures = ["m1", "m2", "m3"]
    summary_ev = evaluate(make_table(measures), measures)
    summary_ev = dataclasses.replace(
        summary_ev, unconverged={"m2": tuple(summary_ev.scored.index[:3])}
    )
    text = rp.format_summary(summary_ev)
    ranked = rp.ranked_measures(summary_ev)
    psi = [summary_ev.ranks.at[name, "Psi"] for name in ranked]
    assert psi == sorted(psi, reverse=True)
    assert text.startswith(f"Best by Ψ: {ranked[0]} (Ψ {psi[0]:.3f}")
    paragraph = " ".join(text[: text.index("Kendall")].split())
    assert "oracle 0.01 Ψ" in paragraph and "random Ψ" in paragraph
    assert "3 values of 1 measure did not converge (scored as computed" in paragraph
    table = text.splitlines()[[line.split()[:1] for line in text.splitlines()].index(["measure"]) :]
    rows = [line.split()[0] for line in table if line.split()[:1] in ([m] for m in measures)]
    assert rows == ranked
    m2 = next(line for line in text.splitlines() if line.startswith("m2 "))
    assert m2.split()[-1] == "3"


def test_the_null_sd_of_tau_matches_random_rankings() -> None:
    rng = np.random.default_rng(0)
    n = 30
    gap = rng.normal(size=n)
    taus = []
    for _ in range(4000):
        mu = rng.normal(size=n)
        signs = np.sign(np.subtract.outer(mu, mu) * np.subtract.outer(gap, gap))
        taus.append(signs.sum() / (n * (n - 1)))
    assert np.std(taus) == pytest.approx(rp.tau_null_sd(n), rel=0.05)
    assert math.isnan(rp.tau_null_sd(1))


# ----------------------------------------------------------------------------------------------
# Figures


def test_scatter_figure_panels_points_and_scale() -> None:
    backend = matplotlib.get_backend()
    table = make_table(["m1", "wide"])
    table["wide"] = 10.0 ** np.linspace(-3, 3, len(table))
    scored = evaluate(table, ["m1", "wide"])
    figure = rp.scatter_figure(scored, "m1")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert len(panels) == len(HPARAMS)
    # Only the finished models are drawn (two failed).
    assert sum(len(c.get_offsets()) for c in panels[0].collections) == scored.models == 16
    legend = panels[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["128", "256", "512"]
    assert "τ = " in figure.get_suptitle() and "Ψ = " in figure.get_suptitle()
    assert panels[0].get_yscale() == "linear"
    assert rp.scatter_figure(scored, "wide").axes[0].get_yscale() == "log"
    png = rp.figure_png(figure)
    assert png.startswith(b"\x89PNG")
    assert matplotlib.get_backend() == backend
    with pytest.raises(KeyError, match="not scored"):
        rp.scatter_figure(scored, "gap")


def test_values_that_did_not_converge_are_crosses_in_every_panel() -> None:
    scored = evaluate(make_table(["m1"]), ["m1"])
    flagged = tuple(scored.scored.index[:4])
    figure = rp.scatter_figure(dataclasses.replace(scored, unconverged={"m1": flagged}), "m1")
    for panel in (ax for ax in figure.axes if ax.get_visible()):
        dots, crosses = panel.collections
        assert len(dots.get_offsets()) == scored.models - 4
        assert len(crosses.get_offsets()) == 4
        assert sorted(map(tuple, crosses.get_offsets().tolist())) == sorted(
            (scored.scored.at[label, "gap"], scored.scored.at[label, "m1"]) for label in flagged
        )
    assert figure.get_suptitle().endswith("× did not converge: 4)")


def test_scores_figure_sorted_bars_and_reference_lines(ev: Evaluation) -> None:
    figure = rp.scores_figure(ev)
    psi_ax, k_ax = figure.axes
    widths = [patch.get_width() for patch in psi_ax.patches]
    assert widths == sorted(widths)
    assert sorted(widths) == sorted(ev.ranks.loc[list(ev.measures), "Psi"])
    labels = [t.get_text() for t in k_ax.get_legend().get_texts()]
    assert any(label.startswith("oracle 0.01") for label in labels)
    assert any(label.startswith("random") for label in labels)
    levels = [line.get_xdata()[0] for line in k_ax.get_lines()]
    assert ev.cmi.at["oracle 0.01", "K"] in levels


def test_population_figure_uses_every_row() -> None:
    table = make_table(["m1"])
    scored = evaluate(table, ["m1"])
    figure = rp.population_figure(scored)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert len(panels) == len(HPARAMS) + 2
    width = panels[0]
    total, fitted = width.patches[:3], width.patches[3:]
    # Every model of the table counts, the two that failed included: 6 per width value.
    assert [p.get_height() for p in total] == [6, 6, 6]
    expected = [
        int(((table.width == w) & (table.train_error < 0.01)).sum()) for w in (128, 256, 512)
    ]
    assert [p.get_height() for p in fitted] == expected
    titles = [ax.get_title() for ax in panels]
    assert any(f"all {len(table)} models" in t for t in titles)
    assert any(f"{scored.models} finished models" in t for t in titles)
    notes = rp.population_notes(scored)
    assert any(f"of the {len(table)} models" in note for note in notes)


# ----------------------------------------------------------------------------------------------
# The report folder


def test_write_report_creates_every_file(written: tuple[Evaluation, Path]) -> None:
    odd, folder = written
    for name in [
        "ranks.csv",
        "cmi.csv",
        "pearson.csv",
        "ranks.tex",
        "cmi.tex",
        "pearson.tex",
        "report.md",
        "report.html",
        "summary.json",
        "figures/scores.png",
        "figures/population.png",
    ]:
        assert (folder / name).is_file(), name
    pngs = sorted((folder / "figures").glob("*.png"))
    assert len(pngs) == 2 + len(HPARAMS) + len(odd.measures)
    assert all(SAFE_NAME.match(p.name) for p in pngs)
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    ranks = pd.read_csv(folder / "ranks.csv", index_col=0)
    np.testing.assert_array_equal(ranks["τ"].to_numpy(), odd.ranks["tau"].to_numpy())


def test_report_html_is_self_contained_and_escaped(written: tuple[Evaluation, Path]) -> None:
    odd, folder = written
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert 'src="http' not in page and 'href="http' not in page
    assert "<link" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert (
        page.count("data:image/png;base64,") == len(images) == 2 + len(HPARAMS) + len(odd.measures)
    )
    files = {p.read_bytes() for p in (folder / "figures").glob("*.png")}
    assert {base64.b64decode(data) for data in images} == files
    assert html.escape("a<b & c/d") in page and "a<b & c/d" not in page
    assert "<h1>Study &lt;1&gt; &amp; co</h1>" in page
    assert "τ-a" in page
    for note in odd.notes:
        assert html.escape(note) in page


def test_the_html_page_opens_with_the_findings_and_the_ranked_measures(
    written: tuple[Evaluation, Path],
) -> None:
    odd, folder = written
    page = (folder / "report.html").read_text(encoding="utf-8")
    findings = page.index(">Findings</h2>")
    board = page.index("Measures ranked by Ψ")
    toc = page.index("<nav>")
    assert findings < board < toc < page.index('class="description"')
    best = html.escape(rp.ranked_measures(odd)[0])
    assert page.index(f"Best by Ψ: {best}") < board
    assert page.count("<details>") == 1 + 3 + 1  # the description, each table, the scatters
    # A figure per measure is folded; the overview figures are not.
    folded = page.index("<details><summary>Each measure against the gap (")
    assert page.index('alt="Ψ and K per measure') < folded
    assert page.index(f'alt="{html.escape(odd.measures[0])} against the generalization') > folded


def test_report_markdown_content(written: tuple[Evaluation, Path]) -> None:
    odd, folder = written
    text = (folder / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# Study \\<1\\> & co")
    assert "A *small* grid." in text
    assert f"{odd.models} models scored; {odd.excluded} excluded" in text
    for note in odd.notes:
        assert f"- {note}" in text
    assert "Kendall τ-a: ties count 0" in text
    assert text.count("| measure ") == 4  # the leaderboard, then the three full tables
    findings = text[text.index("## Findings") : text.index("## Population and notes")]
    assert f"Best by Ψ: {rp.ranked_measures(odd)[0]}".replace("<", "\\<") in findings
    assert "| unconverged |" in findings
    # Alt texts hold escaped brackets ("rescaled to \[0, 1\]").
    links = re.findall(r"!\[(?:\\.|[^\]\\])*\]\((figures/[^)]+)\)", text)
    assert len(links) == len(set(links)) == 2 + len(HPARAMS) + len(odd.measures)
    for link in links:
        assert (folder / link).is_file()
    assert "a\\<b & c/d" in text


def test_figure_names_are_unique_and_safe() -> None:
    names = ["a/b", "a b", "A B", "a-b", "scores", "population", "", "#", "é" * 80, "x" * 200]
    files = rp.figure_names(names)
    assert list(files) == names
    assert len(set(files.values())) == len(names)
    assert all(SAFE_NAME.match(name) and len(name) < 100 for name in files.values())
    assert not {"scores.png", "population.png"} & set(files.values())


def test_report_without_status_or_training_columns(tmp_path: Path) -> None:
    table = make_table(["m1"], train_columns=False)
    assert not {"status", "train_error", "train_ce"} & set(table.columns)
    scored = evaluate(table, ["m1"])
    assert scored.excluded == 0
    figure = rp.population_figure(scored)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 1  # the gap histogram
    rp.write_report(scored, tmp_path, title="plain CSV")
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "no train_error column" in text
    assert "no train_ce column" in text
    assert (tmp_path / "figures" / "population.png").is_file()


def test_summary_json_has_null_for_nan(written: tuple[Evaluation, Path]) -> None:
    odd, folder = written
    text = (folder / "summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text
    content = json.loads(text)
    assert content["models"] == odd.models and content["excluded"] == odd.excluded
    assert content["coverage"] == {"present": odd.coverage[0], "full": odd.coverage[1]}
    assert content["notes"] == odd.notes
    assert content["title"] == "Study <1> & co"
    canonical = next(r for r in content["ranks"] if r["measure"] == "canonical ordering")
    assert canonical["tau"] is None and canonical["Psi"] is None
    assert [r["measure"] for r in content["ranks"]] == list(odd.ranks.index)
    assert [r["measure"] for r in content["cmi"]] == list(odd.cmi.index)
    assert {r["measure"] for r in content["pearson"]} == set(odd.measures)
    first = content["ranks"][0]
    assert first["tau"] == odd.ranks.iloc[0]["tau"]


def test_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.md"
    files._write_atomic(path, "old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        files._write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_figure_png_is_small_and_valid(ev: Evaluation) -> None:
    from PIL import Image

    png = rp.figure_png(rp.scatter_figure(ev, "m1"))
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size[0] <= 1300
    assert len(png) < 150_000


# ----------------------------------------------------------------------------------------------
# Trends (Tsuzuku et al. 2020, figures 1-2)

WIDTHS, DEPTHS, SEEDS = [32, 128, 512, 2048], [1, 2, 3, 4], [0, 1, 2]


def make_grid(measures: list[str], *, seed: int = 0) -> pd.DataFrame:
    """Width x depth x seed, as the paper's figure 2: the measures grow with depth and width."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        list(itertools.product(WIDTHS, DEPTHS, SEEDS)), columns=["width", "depth", "seed"]
    )
    table["model"] = "mlp"
    table["gap"] = 0.1 + 0.02 * table.depth - 0.01 * np.log2(table.width)
    table["gap"] += rng.normal(0, 0.005, len(table))
    for k, name in enumerate(measures):
        table[name] = (k + 1) * table.depth + np.log2(table.width) + rng.normal(size=len(table))
    return table


def grid_evaluation(table: pd.DataFrame, measures: list[str], **kwargs: object) -> Evaluation:
    kwargs = {"hparams": ["width", "depth", "seed"], "architecture": "model", **kwargs}
    return score_table(table, measures, draws=1, seed=0, **kwargs)


@pytest.fixture(scope="module")
def grid() -> Evaluation:
    return grid_evaluation(make_grid(["m1", "m2"]), ["m1", "m2"])


def hand_table() -> pd.DataFrame:
    """Two widths x three seeds with values whose rescaled means are easy to compute by hand."""
    return pd.DataFrame(
        {
            "width": [1, 1, 1, 2, 2, 2],
            "seed": [0, 1, 2, 0, 1, 2],
            "gap": [0.1, 0.2, 0.3, 0.2, 0.3, 0.4],
            "line": [0.0, 2.0, 4.0, 6.0, 8.0, 10.0],
            "holes": [1.0, np.nan, 3.0, 5.0, 5.0, 5.0],
            "sparse": [np.nan, np.inf, 2.0, 4.0, 6.0, np.nan],
            "flat": [7.0] * 6,
        }
    )


def test_trend_table_by_hand() -> None:
    measures = ["line", "holes", "sparse", "flat"]
    ev = score_table(hand_table(), measures, hparams=["width", "seed"], draws=1)
    assert rp.trend_hparams(ev) == ("width",)  # the seed replicates: it is no axis
    table = rp.trend_table(ev, "width")
    assert list(table.columns) == ["measure", "width", *rp.TREND_COLUMNS]
    assert (
        list(table.measure)
        == ["line"] * 2 + ["holes"] * 2 + ["sparse"] * 2 + ["flat"] * 2 + ["gap"] * 2
    )
    assert list(table.width) == [1, 2] * 5
    # A single axis (a seed is none): no series, the mean runs over the seeds.
    assert table.series.isna().all() and table.series_level.isna().all()
    half = np.sqrt(0.5) / 2  # std of {0, 0.5}
    expected = {
        # 0..10 rescales to 0, .2, ..., 1.
        "line": ([0.2, 0.8], [0.2, 0.2], [3, 3]),
        # NaN left out: 1, 3, 5 -> 0, .5, 1.
        "holes": ([0.25, 1.0], [half, 0.0], [2, 3]),
        # NaN and inf left out; a single model has no std.
        "sparse": ([0.0, 0.75], [np.nan, half], [1, 2]),
        # A constant column rescales to 0.
        "flat": ([0.0, 0.0], [0.0, 0.0], [3, 3]),
        # The gap's own trend: .1 .. .4 rescales to 0, 1/3, 2/3, 1/3, 2/3, 1.
        "gap": ([1 / 3, 2 / 3], [1 / 3, 1 / 3], [3, 3]),
    }
    for name, (mean, std, count) in expected.items():
        rows = table[table.measure == name]
        np.testing.assert_allclose(rows["mean"], mean, err_msg=name)
        np.testing.assert_allclose(rows["std"], std, err_msg=name)
        assert list(rows["count"]) == count, name


def test_trend_table_rescales_per_architecture() -> None:
    mlp = make_grid(["m1"])
    # A second architecture on another scale: the same values, times 1000 and shifted.
    cnn = mlp.assign(model="cnn", m1=1000 * mlp.m1 + 5, gap=10 * mlp.gap - 1)
    both = pd.concat([mlp, cnn], ignore_index=True)
    alone = rp.trend_table(grid_evaluation(mlp, ["m1"]), "width")
    mixed = rp.trend_table(grid_evaluation(both, ["m1"]), "width")
    np.testing.assert_allclose(mixed["mean"], alone["mean"])
    assert list(mixed["count"]) == [2 * c for c in alone["count"]]
    # Rescaled over both architectures at once, the cnn's scale would swamp the mlp's trend.
    pooled = rp.trend_table(grid_evaluation(both, ["m1"], architecture=None), "width")
    assert not np.allclose(pooled["mean"], alone["mean"])


def test_trend_table_series_for_width_and_depth(grid: Evaluation) -> None:
    assert rp.trend_hparams(grid) == ("width", "depth")
    for hparam, other, levels in (("width", "depth", DEPTHS), ("depth", "width", WIDTHS)):
        table = rp.trend_table(grid, hparam)
        assert len(table) == (len(grid.measures) + 1) * len(WIDTHS) * len(DEPTHS)
        assert set(table.series) == {other}
        assert sorted(set(table.series_level)) == levels
        assert (table["count"] == len(SEEDS)).all()
        assert list(table.measure.unique()) == [*grid.measures, grid.gap]
    # One line (depth 3) by hand: rescale over every model, average over the seeds.
    table = rp.trend_table(grid, "width")
    values = grid.scored["m2"]
    rescaled = (values - values.min()) / (values.max() - values.min())
    three = rescaled[grid.scored.depth == 3].groupby(grid.scored.width[grid.scored.depth == 3])
    rows = table[(table.measure == "m2") & (table.series_level == 3)]
    np.testing.assert_allclose(rows["mean"], three.mean().to_numpy())
    np.testing.assert_allclose(rows["std"], three.std().to_numpy())


def test_trend_table_without_series_for_three_hparams(ev: Evaluation) -> None:
    assert rp.trend_hparams(ev) == tuple(HPARAMS)
    table = rp.trend_table(ev, "batch_size")
    assert table.series.isna().all()
    assert list(table.batch_size.unique()) == [32, 64, 128]
    counts = table[table.measure == "m1"]["count"]
    assert counts.sum() == ev.models  # every model at its level, whatever its other values


def test_trend_axes_leave_out_seeds_one_level_and_names() -> None:
    table = make_grid(["m1"]).assign(optimizer=lambda t: np.where(t.seed == 0, "sgd", "adam"))
    table["lr"] = 0.1
    ev = grid_evaluation(table, ["m1"], hparams=["width", "optimizer", "lr", "seed"])
    assert rp.trend_hparams(ev) == ("width",)
    for name in ("optimizer", "lr", "seed", "depth"):
        with pytest.raises(KeyError, match="trend axes: width"):
            rp.trend_table(ev, name)
        with pytest.raises(KeyError, match="trend axes: width"):
            rp.trend_figure(ev, name)


def test_trend_figure_panels_lines_and_scale(grid: Evaluation) -> None:
    figure = rp.trend_figure(grid, "width")
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(grid.measures)
    assert panels[0].get_xscale() == "log"  # widths 32 .. 2048
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["32", "128", "512", "2048"]
    table = rp.trend_table(grid, "width")
    gap = rp.trend_table(grid_evaluation(grid.scored, ["m1"], hparams=["width"]), "width")
    for ax, measure in zip(panels, grid.measures, strict=True):
        *series, reference = ax.get_lines()
        assert len(series) == len(DEPTHS)
        for line, depth in zip(series, DEPTHS, strict=True):
            rows = table[(table.measure == measure) & (table.series_level == depth)]
            np.testing.assert_allclose(line.get_ydata(), rows["mean"])
        # The gap: a dashed reference, averaged over every model at each width.
        assert reference.get_linestyle() == "--"
        np.testing.assert_allclose(reference.get_ydata(), gap[gap.measure == "gap"]["mean"])
        assert len(ax.collections) == len(DEPTHS)  # the ± std bands
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == [f"depth = {d}" for d in DEPTHS] + ["gap, all models"]
    assert "width" in figure.get_suptitle() and "per architecture" in figure.get_suptitle()
    depth = rp.trend_figure(grid, "depth", measures=["m2"])
    assert [ax.get_title() for ax in depth.axes if ax.get_visible()] == ["m2"]
    assert depth.axes[0].get_xscale() == "linear"
    with pytest.raises(KeyError, match="not scored"):
        rp.trend_figure(grid, "width", measures=["gap"])


def test_trend_figure_stays_legible_with_many_measures() -> None:
    names = [f"measure-with-a-rather-long-name-{k}" for k in range(12)]
    many = grid_evaluation(make_grid(names), names)
    figure = rp.trend_figure(many, "depth")
    width, height = figure.get_size_inches()
    assert width * rp.DPI <= 1250  # the HTML page's width
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 12
    assert len(figure.axes) == 15  # 5 panels a row
    png = rp.figure_png(figure)
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (round(width * rp.DPI), round(height * rp.DPI))


def test_write_report_writes_trends(tmp_path: Path) -> None:
    table = make_grid(["m1"]).assign(optimizer=lambda t: np.where(t.depth < 3, "sgd", "adam"))
    table["lr"] = 0.1
    scored = grid_evaluation(table, ["m1"], hparams=["width", "optimizer", "lr", "seed"])
    rp.write_report(scored, tmp_path, title="trends")
    trends = sorted(p.name for p in (tmp_path / "figures").glob("trend-*.png"))
    assert trends == ["trend-width.png"]  # not the optimizer, the single lr or the seed
    back = pd.read_csv(tmp_path / "trends.csv")
    assert list(back.columns) == list(rp.TRENDS_CSV_COLUMNS)
    assert set(back.hparam) == {"width"}
    expected = rp.trend_table(scored, "width")
    np.testing.assert_allclose(back["mean"], expected["mean"])
    assert list(back.level) == list(expected.width)
    assert back.series.isna().all()
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Measures against width, rescaled to \\[0, 1\\] per architecture" in text
    assert text.index("figures/trend-width.png") < text.index("figures/scatter-m1.png")


def test_written_trends(written: tuple[Evaluation, Path]) -> None:
    odd, folder = written
    for name in HPARAMS:
        assert (folder / "figures" / f"trend-{name}.png").is_file()
    back = pd.read_csv(folder / "trends.csv")
    assert list(back.hparam.unique()) == HPARAMS
    assert list(back.measure.unique()) == [*odd.measures, odd.gap]
    assert back["mean"].between(0, 1).all()


def test_trends_csv_without_axes() -> None:
    table = make_table(["m1"]).assign(width=128, batch_size=32, lr=0.01)
    table["gap"] += np.arange(len(table)) / 100
    assert rp.trend_hparams(evaluate(table, ["m1"])) == ()
    assert rp.trends_csv(evaluate(table, ["m1"])) == ",".join(rp.TRENDS_CSV_COLUMNS) + "\n"


# ----------------------------------------------------------------------------------------------
# The robust part (Dziugaite et al. 2020)


def test_a_report_with_its_robust_part(tmp_path: Path) -> None:
    measures = ["m1", "m2"]
    robust = with_robust_scores(evaluate(make_table(measures), measures), test_size=math.inf)
    assert robust.robust is not None and robust.prediction is not None
    # The leaderboard and the printed summary add the worst environment and the held-out R².
    board = rp.leaderboard(robust)
    assert board.at["m1", "worst"] == robust.robust.summary.at["m1", ("all", "max")]
    assert board.at["m1", "R²"] == robust.prediction.at["m1", "r2"]
    text = rp.format_summary(robust)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Worst sign-error over environments" in text and "Best held-out R²" in " ".join(
        text.split()
    )
    # The table in every format, its figures, and the JSON.
    table = rp.robust_table(robust)
    assert list(table.columns) == [
        "mean", "p90", "worst", *(f"worst {h}" for h in HPARAMS), "environments", "R²"
    ]  # fmt: skip
    assert list(table.index) == [*measures, *robust.robust.baselines]
    folder = tmp_path / "report"
    rp.write_report(robust, folder, title="robust")
    written_csv = pd.read_csv(folder / "robust.csv", index_col=0)
    assert written_csv.loc["m1", "worst"] == pytest.approx(table.at["m1", "worst"])
    assert r"\label{tab:robust}" in (folder / "robust.tex").read_text()
    page = (folder / "report.html").read_text()
    assert "Robustness over environments (Dziugaite et al. 2020) and held-out R²" in page
    # lr has two values: its environments hold one pair, below the threshold of 1.5, so it has
    # no distribution to draw.
    assert robust.robust.environment_counts["lr"][0] == 0
    figures = {p.name for p in (folder / "figures").glob("robust-*.png")}
    assert figures == {
        "robust-worst.png",
        *(f"robust-cdf-{h}.png" for h in ["width", "batch_size", "all"]),
    }
    content = json.loads((folder / "summary.json").read_text())
    assert content["robust"]["test_size"] is None  # inf has no JSON number
    assert {row["measure"] for row in content["robust"]["summary"]} == set(table.index)
    assert {row["measure"] for row in content["prediction"]} == set(measures)


def test_a_report_without_robust_part_has_none_of_its_columns(ev: Evaluation) -> None:
    assert "worst" not in rp.leaderboard(ev).columns
    with pytest.raises(ValueError, match="no robust part"):
        rp.robust_table(ev)
