"""Contract tests: every registered measure, on small trained models."""

from __future__ import annotations

import math

import pytest
import torch

import genmeasures as gm
from domains import ADAPTIVE, HEAVY_TAILED, RELATIVE, REPRESENTATION

ALL = [spec.name for spec in gm.list_measures()]

SPECTRAL = {
    "spec-init",
    "spec-orig",
    "spec-init-main",
    "spec-orig-main",
    "prod-of-spec-over-margin",
    "prod-of-spec",
    "fro-over-spec",
    "sum-of-spec-over-margin",
    "sum-of-spec",
    "spec-dist",
}
ISSUE_MEASURES = SPECTRAL | {
    "cross-entropy",
    "inverse-margin",
    "neg-entropy",
    "input-grad-norm",
    "vc-dim",
    "num-params",
    "prod-of-fro-over-margin",
    "prod-of-fro",
    "sum-of-fro-over-margin",
    "sum-of-fro",
    "frob-distance",
    "param-norm",
    "path-norm-over-margin",
    "path-norm",
    "fisher-rao",
}
NORMALIZED_FLAT_MINIMA = {
    "normalized-sharpness",
    "normalized-sharpness-arxiv",
    "normalized-sharpness-param",
    "hessian-weighted-norm",
    "hessian-trace",
    "hessian-max-eig",
}
FLATNESS = {
    "pacbayes-init",
    "pacbayes-orig",
    "sharpness-init",
    "sharpness-orig",
    "pacbayes-flatness",
    "sharpness-flatness",
    "pacbayes-mag-init",
    "pacbayes-mag-orig",
    "pac-sharpness-mag-init",
    "pac-sharpness-mag-orig",
    "pacbayes-mag-flatness",
    "sharpness-mag-flatness",
}
OPTIMIZATION = {
    "num-step-to-0.1-loss",
    "num-step-0.1-to-0.01-loss",
    "grad-noise-epoch-1",
    "grad-noise-final",
}


def test_every_catalog_measure_of_this_family_is_registered_with_its_reshaped_variants():
    # issue 19: the measures the field added since
    later = {*HEAVY_TAILED, *REPRESENTATION, *ADAPTIVE, *RELATIVE}
    assert set(ALL) == ISSUE_MEASURES | NORMALIZED_FLAT_MINIMA | FLATNESS | OPTIMIZATION | later | {
        f"{name}-reshaped" for name in SPECTRAL
    }


#: Where each definition holds (issue 14): the measures of a chain of layers, of positively
#: homogeneous units, of weight matrices only; every other one needs a differentiable network.
CHAIN_DOMAIN = {
    "vc-dim",
    "num-params",
    "prod-of-fro-over-margin",
    "sum-of-fro-over-margin",
    *(
        f"{name}{suffix}"
        for name in SPECTRAL - {"fro-over-spec", "spec-dist"}
        for suffix in ("", "-reshaped")
    ),
}
HOMOGENEOUS_DOMAIN = {"path-norm", "path-norm-over-margin"}
WEIGHTS_DOMAIN = (
    {"param-norm", "frob-distance", "prod-of-fro", "sum-of-fro"}
    | {f"{name}{suffix}" for name in ("fro-over-spec", "spec-dist") for suffix in ("", "-reshaped")}
    | {"normalized-sharpness", "normalized-sharpness-arxiv"}
    | set(HEAVY_TAILED)
)


@pytest.mark.parametrize("name", ALL)
def test_every_measure_declares_its_domain(name):
    domain = gm.get_measure(name).domain
    expected = (
        "chain"
        if name in CHAIN_DOMAIN
        else "homogeneous"
        if name in HOMOGENEOUS_DOMAIN
        else "weights"
        if name in WEIGHTS_DOMAIN
        else "differentiable"
    )
    assert domain == expected


def test_a_domain_must_be_one_of_the_four():
    with pytest.raises(ValueError, match="domain must be one of"):
        gm.register_measure("test-bad-domain", eq="-", family="test", domain="convex")


@pytest.mark.parametrize("name", ALL)
def test_every_measure_has_an_implementation_version(name):
    version = gm.get_measure(name).version
    assert type(version) is int and version >= 1, f"{name}: version {version!r}"


@pytest.mark.parametrize("version", [0, -1, 1.0, "1", True])
def test_a_version_must_be_an_integer_from_1(version):
    with pytest.raises(ValueError, match=r"test-bad-version: version must be an integer >= 1"):
        gm.register_measure("test-bad-version", eq="-", family="test", version=version)
    with pytest.raises(gm.UnknownMeasureError):
        gm.get_measure("test-bad-version")  # nothing registered


@pytest.fixture(scope="module", params=["trained_bn_mlp", "trained_nin"])
def trained(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def all_results(trained):
    run, data = trained
    return gm.compute(run.model, data, init_model=run.init_model, records=run.records, seed=3)


@pytest.mark.parametrize("name", ALL)
def test_finite_value_on_a_small_trained_model(name, all_results):
    result = all_results[name]
    assert result.status == "ok", result.message
    assert math.isfinite(result.value)
    assert result.converged
    assert result.seconds >= 0
    assert result.params.get("variant") == (
        "reshaped"
        if name.endswith("-reshaped")
        else "operator"
        if gm.get_measure(name).family == "spectral"
        else None
    )


@pytest.mark.parametrize("name", ALL)
def test_same_seed_gives_the_same_value(name, trained, all_results):
    run, data = trained
    inputs = {"init_model": run.init_model, "records": run.records}
    again = gm.compute(run.model, data, measures=[name], seed=3, **inputs)
    assert again[name].value == all_results[name].value
    if gm.get_measure(name).stochastic == "no*":
        other_seed = gm.compute(run.model, data, measures=[name], seed=4, **inputs)
        assert other_seed[name].value == pytest.approx(all_results[name].value, rel=1e-8)


@pytest.mark.parametrize("name", [n for n in ALL if "init" in gm.get_measure(n).needs])
def test_init_relative_measures_need_the_initial_model(name, trained):
    run, data = trained
    with pytest.raises(gm.MissingInputError, match=f"{name}.*initial weights"):
        gm.compute(run.model, data, measures=[name])
    reported = gm.compute(run.model, data, measures=name + "*")[name]
    assert reported.status == "missing"
    assert math.isnan(reported.value)
    assert "init_model" in reported.message


@pytest.mark.parametrize("name", [n for n in ALL if "records" in gm.get_measure(n).needs])
def test_records_measures_need_the_training_records(name, trained):
    run, data = trained
    with pytest.raises(gm.MissingInputError, match=f"{name}.*training records"):
        gm.compute(run.model, data, measures=[name], init_model=run.init_model)
    reported = gm.compute(run.model, data, measures=name + "*")[name]
    assert reported.status == "missing"
    assert math.isnan(reported.value)
    assert "records=" in reported.message


@pytest.mark.parametrize("name", [n for n in ALL if "data" in gm.get_measure(n).needs])
def test_data_measures_need_the_training_set(name, trained):
    run, _ = trained
    with pytest.raises(gm.MissingInputError, match="training set"):
        gm.compute(run.model, None, measures=[name], init_model=run.init_model, records=run.records)


@pytest.mark.parametrize("name", [n for n in ALL if not gm.get_measure(n).needs & {"data", "init"}])
def test_measures_without_data_work_without_data(name, trained):
    run, data = trained
    alone = gm.compute(run.model, None, measures=[name], records=run.records)[name]
    with_data = gm.compute(run.model, data, measures=[name], records=run.records)[name]
    assert alone.value == pytest.approx(with_data.value, rel=1e-10)


def test_compute_leaves_the_callers_model_untouched(trained):
    run, data = trained
    run.model.train()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    gm.compute(run.model, data, init_model=run.init_model)
    assert run.model.training
    assert all(p.requires_grad for p in run.model.parameters())
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in run.model.modules())
    run.model.eval()


def test_batch_size_does_not_change_values(trained):
    run, data = trained
    names = [
        "cross-entropy",
        "fisher-rao",
        "grad-noise-final",
        "input-grad-norm",
        "inverse-margin",
        "neg-entropy",
    ]
    small = gm.compute(run.model, data, measures=names, batch_size=7).values
    large = gm.compute(run.model, data, measures=names, batch_size=10_000).values
    for name in names:
        assert small[name] == pytest.approx(large[name], rel=1e-5), name
