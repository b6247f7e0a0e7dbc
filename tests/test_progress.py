"""Progress that tells the truth: a study's bars advance with the work done, not the count."""

from __future__ import annotations

from genmeasures import cli_commands
from genmeasures.zoo import load_space
from genmeasures.zoo.space.memory import forward_multiply_adds


def test_a_bar_advances_by_each_models_share_of_the_work() -> None:
    configs = load_space("quick").configs()
    widths = sorted({c.hparams["width"] for c in configs})
    wide = next(c for c in configs if c.hparams["width"] == widths[-1])
    narrow, other = [c for c in configs if c.hparams["width"] == widths[0]][:2]
    with cli_commands._WorkBar("training", [wide, narrow, other]) as bar:
        bar.finished(wide.hash, "done")
        share = forward_multiply_adds(wide) / (
            forward_multiply_adds(wide) + 2 * forward_multiply_adds(narrow)
        )
        assert bar.fraction == share
        assert share > 0.6, "one model of three, most of the work"
        assert bar.done == 1
        bar.finished(narrow.hash)
        bar.finished(other.hash)
        assert bar.fraction == 1.0 and bar.done == 3
