"""The registry and compute(): names, patterns, options, results, and bad input."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import tiny_mlp
from torch import nn

import genmeasures as gm
from genmeasures.measures.registry import MeasureSpec, register_measure


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (20,), generator=generator)


def test_aliases_are_matched_case_insensitively():
    assert gm.get_measure("Frob Distance").name == "frob-distance"
    assert gm.get_measure("PATH-NORM/MARGIN").name == "path-norm-over-margin"
    assert gm.get_measure("#params").name == "num-params"


def test_unknown_name_lists_close_matches_and_how_to_see_all():
    with pytest.raises(gm.UnknownMeasureError, match=r"path-nrom.*path-norm.*genmeasures list"):
        gm.get_measure("path-nrom")


def test_patterns_select_in_catalog_order():
    names = [spec.name for spec in gm.list_measures("sum-of-*")]
    assert names == [
        "sum-of-spec-over-margin",
        "sum-of-spec-over-margin-reshaped",
        "sum-of-spec",
        "sum-of-spec-reshaped",
        "sum-of-fro-over-margin",
        "sum-of-fro",
    ]


def test_a_list_mixes_names_and_patterns_and_only_names_are_explicit(data):
    model = tiny_mlp()
    with pytest.raises(gm.MissingInputError, match="frob-distance"):
        gm.compute(model, data, measures=["frob*", "frob-distance"])
    results = gm.compute(model, data, measures=["frob*", "param-norm", "frob*"])
    assert list(results) == ["frob-distance", "param-norm"]
    assert results["frob-distance"].status == "missing"


def test_exclusions_remove_what_the_items_before_them_selected(data):
    results = gm.compute(tiny_mlp(), data, measures=["*fro*", "!frob-*", "!*over*"])
    assert list(results) == ["prod-of-fro", "sum-of-fro"]
    kept = gm.compute(tiny_mlp(), None, measures=["all", "!*", "param-norm"])
    assert list(kept) == ["param-norm"]
    with pytest.raises(gm.MeasureError, match="select no measure"):
        gm.compute(tiny_mlp(), data, measures=["param-norm", "!param-norm"])
    with pytest.raises(gm.UnknownMeasureError, match="nope"):
        gm.compute(tiny_mlp(), data, measures=["all", "!nope"])


def test_pattern_matching_nothing_is_an_error(data):
    with pytest.raises(gm.MeasureError, match="matches no measure"):
        gm.compute(tiny_mlp(), data, measures="*nothing*")


def test_results_expose_values_and_a_frame(data):
    results = gm.compute(tiny_mlp(), data, measures=["param-norm", "num-params"])
    assert list(results) == ["param-norm", "num-params"]
    assert set(results.values) == {"param-norm", "num-params"}
    assert all(isinstance(v, float) for v in results.values.values())
    frame = results.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert frame.loc["param-norm", "value"] == results["param-norm"].value
    assert "param-norm" in repr(results)


def test_spectral_results_carry_a_per_layer_table(data):
    result = gm.compute(tiny_mlp(), data, measures="prod-of-spec")["prod-of-spec"]
    assert list(result.per_layer["layer"]) == ["fc1", "fc2", "out"]
    assert math.log(result.value) == pytest.approx(
        2 * sum(map(math.log, result.per_layer["spectral"]))
    )


def test_options_are_validated(data):
    with pytest.raises(
        gm.MeasureError, match=r"'param-norm': unknown option\(s\) bogus; it takes no"
    ):
        gm.compute(tiny_mlp(), data, measures="param-norm", options={"param-norm": {"bogus": 1}})
    with pytest.raises(gm.MeasureError, match="not among the measures computed"):
        gm.compute(tiny_mlp(), data, measures="param-norm", options={"path-norm": {}})
    with pytest.raises(gm.UnknownMeasureError):
        gm.compute(tiny_mlp(), data, measures="param-norm", options={"no-such": {}})


@pytest.mark.filterwarnings("ignore::genmeasures.GenMeasuresWarning")
def test_option_spellings_of_one_value_are_one_value(data):
    """2 and 2.0 are one s_max: equal params, hence one store key (issue 13)."""
    results = [
        gm.compute(
            tiny_mlp(),
            data,
            measures="pacbayes-flatness",
            options={"pacbayes-flatness": {"s_max": s_max, "steps": 2, "draws": 1}},
        )["pacbayes-flatness"]
        for s_max in (2, 2.0)
    ]
    assert results[0].params == results[1].params
    assert type(results[0].params["s_max"]) is float
    spec = gm.get_measure("pacbayes-flatness")
    assert spec.params_key({"s_max": 2}, 0) == spec.params_key({"s_max": 2.0}, 0)
    assert spec.params_key({"s_max": 2}, 0) != spec.params_key({"s_max": 1}, 0)


def test_option_values_are_checked_before_any_measure_runs(data, monkeypatch):
    ran = []
    monkeypatch.setattr(MeasureSpec, "call", lambda spec, ctx, options: ran.append(spec))
    with pytest.raises(gm.MeasureError, match=r"'hessian-trace': probes expected an integer >= 1"):
        gm.compute(
            tiny_mlp(),
            data,
            measures=["param-norm", "hessian-trace"],
            options={"hessian-trace": {"probes": 0}},
        )
    assert ran == []


def test_spectral_variant_is_fixed_by_the_name_not_an_option(data):
    with pytest.raises(gm.MeasureError, match="unknown option"):
        gm.compute(
            tiny_mlp(), data, measures="prod-of-spec", options={"prod-of-spec": {"variant": "x"}}
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "not a model"}, "model must be a torch.nn.Module"),
        ({"data": [1, 2, 3]}, "data must be a Dataset"),
        (
            {"data": (torch.zeros(4, 5), torch.zeros(3, dtype=torch.long))},
            r"inputs \(4, 5\) and labels \(3,\)",
        ),
        ({"data": (torch.zeros(4, 5), torch.zeros(4))}, "integer class indices"),
        ({"data": (torch.zeros(4, 5), torch.tensor([0, 1, -1, 0]))}, "minimum -1"),
        ({"data": (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))}, r"0 example\(s\)"),
        ({"batch_size": 0}, "batch_size expected an integer >= 1"),
        ({"seed": 1.5}, "seed expected an integer"),
        ({"init_model": 3}, "init_model must be"),
        ({"measures": [1, 2]}, "a list of them"),
        ({"measures": []}, "a list of them"),
    ],
)
def test_bad_arguments_are_rejected_with_what_was_expected(kwargs, message, data):
    arguments = {"model": tiny_mlp(), "data": data, "measures": "cross-entropy"} | kwargs
    with pytest.raises(gm.MeasureError, match=message):
        gm.compute(arguments.pop("model"), arguments.pop("data"), **arguments)


def test_label_out_of_range_for_the_model_is_an_error():
    inputs = torch.zeros(4, 5, dtype=torch.float64)
    expected = r"labels in \[0, 3\) \(the model has 3 outputs\), received data with labels up to 7"
    with pytest.raises(gm.MeasureError, match=expected):
        gm.compute(tiny_mlp(), (inputs, torch.tensor([0, 1, 7, 2])), measures="cross-entropy")


def test_non_finite_weight_names_the_layer(data):
    model = tiny_mlp()
    with torch.no_grad():
        model.fc2.weight[0, 0] = math.nan
    with pytest.raises(gm.NumericalError, match="non-finite"):
        gm.compute(model, data, measures="cross-entropy")
    with pytest.raises(gm.NumericalError, match=r"'fc2' has a non-finite weight"):
        gm.compute(model, None, measures="param-norm")


def test_init_model_of_another_shape_is_an_error(data):
    other = gm.build_model("mlp", (5,), 3, depth=2, width=6, seed=0).double()
    with pytest.raises(gm.ModelError, match=r"'fc1': shape \(4, 5\) in the trained model"):
        gm.compute(tiny_mlp(), data, measures="frob-distance", init_model=other)


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.fc(x))))


def test_a_layernorm_network_refuses_only_the_chain_and_homogeneous_measures(data):
    """LayerNorm breaks the chain and homogeneity; every other definition holds (issue 14)."""
    model = WithLayerNorm().double()
    with pytest.raises(gm.UnsupportedLayerError, match=r"'spec-init'.*LayerNorm"):
        gm.compute(model, data, measures=["spec-init"], init_model=WithLayerNorm().double())
    with pytest.warns(gm.GenMeasuresWarning, match="margin"):
        results = gm.compute(model, data, measures="*")
    for name in results:
        domain = gm.get_measure(name).domain
        if domain in ("chain", "homogeneous"):
            assert results[name].status == "unsupported", name
            assert "LayerNorm" in results[name].message, name
        elif results[name].status not in ("missing", "undefined"):
            assert results[name].status == "ok", name
    assert results["param-norm"].extra["weights"]
    assert results["pacbayes-flatness"].extra["parameters"] == "all trainable parameters (unfolded)"
    assert math.isfinite(results["input-grad-norm"].value)
    assert math.isfinite(results["grad-noise-final"].value)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register_measure("param-norm", eq=42, family="norm")(lambda ctx: None)


def test_measure_options_must_be_keyword_only_with_defaults():
    def positional(ctx, scale):
        return None

    with pytest.raises(TypeError, match="keyword-only"):
        register_measure("test-positional", eq="-", family="test")(positional)
