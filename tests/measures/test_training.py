"""The optimization-based measures (eqs 63-66) against hand-built records and a per-example loop.

The grad-noise measures are compared in float64 on tiny MLPs with the reference of
``tests/reference.py``, which takes one backward pass per example; the step counts are checked on
records written by hand.
"""

from __future__ import annotations

import ast
import copy
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

import genmeasures as gm
from genmeasures.measures import training
from genmeasures.measures.training import SUBSET_PURPOSE, first_step_at_or_below
from genmeasures.seeding import derive_seed
from reference import gradient_variance_by_loop

STEP_MEASURES = ["num-step-to-0.1-loss", "num-step-0.1-to-0.01-loss"]
NOISE_MEASURES = ["grad-noise-epoch-1", "grad-noise-final"]


def noisy_mlp(seed: int, *, batchnorm: bool) -> nn.Module:
    """A float64 MLP 5 → 4 → 4 → 3 with dropout and, optionally, BN with random running stats."""
    model = gm.build_model(
        "mlp", (5,), 3, depth=2, width=4, batchnorm=batchnorm, dropout=0.5, seed=seed
    ).double()
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.copy_(1 + 0.3 * torch.randn(4, generator=generator))
                module.bias.copy_(0.3 * torch.randn(4, generator=generator))
                module.running_mean.copy_(0.5 * torch.randn(4, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(4, generator=generator))
    return model.train()  # compute() must switch to eval mode by itself


def float64_data(m: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(m, 5, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, 3, (m,), generator=generator)


def records_for(epoch1: nn.Module | None, ce_checks=((0, 2.3), (10, 0.05), (20, 0.009))) -> dict:
    return {
        "ce_checks": list(ce_checks),
        "epoch1_state": None if epoch1 is None else epoch1.state_dict(),
        "batch_size": 8,
        "steps_per_epoch": 5,
    }


# ------------------------------------------------------------------------- grad noise (65, 66)


class TwiceApplied(nn.Module):
    """One dense layer applied twice: its gradient sums two outer products per example."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.inner(torch.relu(self.inner(x)))))


class PerPosition(nn.Module):
    """A dense layer on each of several positions of an example (inputs are not vectors)."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.stack([x, x.flip(1)], dim=1)).mean(dim=1)


def frozen_first_layer(model: nn.Module) -> nn.Module:
    model.fc1.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("build", "dense"),
    [
        (lambda: noisy_mlp(0, batchnorm=False), True),
        (lambda: gm.build_model("mlp", (5,), 3, depth=3, width=6, bias=False, seed=2), True),
        (lambda: noisy_mlp(0, batchnorm=True), False),  # BatchNorm's parameters are not dense
        (TwiceApplied, False),
        (PerPosition, False),
        (lambda: frozen_first_layer(noisy_mlp(0, batchnorm=False)), True),
    ],
    ids=["mlp", "no-bias", "batchnorm", "layer-twice", "per-position", "frozen"],
)
def test_the_dense_closed_form_is_exact_and_taken_only_where_it_holds(build, dense):
    # Without per-example gradients where every parameter is in a dense layer applied once to a
    # vector per example; per-example gradients otherwise. Both against the loop, in float64.
    model = build().double().eval()
    inputs, labels = float64_data()
    mean = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    found = training._dense_squared_deviations(model, inputs, labels, mean, batch_size=16)
    assert (found is not None) == dense
    value = training._gradient_variance(model, inputs, labels, batch_size=16)
    every_parameter = copy.deepcopy(model).requires_grad_(True)  # frozen ones count too
    expected = gradient_variance_by_loop(every_parameter, inputs, labels)
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
def test_grad_noise_matches_the_per_example_loop(batchnorm):
    model, epoch1 = noisy_mlp(0, batchnorm=batchnorm), noisy_mlp(1, batchnorm=batchnorm)
    inputs, labels = float64_data()
    results = gm.compute(
        model,
        (inputs, labels),
        measures=NOISE_MEASURES,
        records=records_for(epoch1),
        batch_size=7,
    )
    final = gradient_variance_by_loop(noisy_mlp(0, batchnorm=batchnorm), inputs, labels)
    first = gradient_variance_by_loop(noisy_mlp(1, batchnorm=batchnorm), inputs, labels)
    assert final > 0 and first > 0 and final != pytest.approx(first)
    assert results["grad-noise-final"].value == pytest.approx(final, rel=1e-10)
    assert results["grad-noise-epoch-1"].value == pytest.approx(first, rel=1e-10)
    assert results["grad-noise-final"].params == {"grad_noise_samples": None, "seed": 0}
    assert model.training  # the caller's model is left as it was


def test_grad_noise_samples_draw_one_shared_subset_without_replacement():
    model, epoch1 = noisy_mlp(0, batchnorm=True), noisy_mlp(1, batchnorm=True)
    inputs, labels = float64_data()
    options = {name: {"grad_noise_samples": 15} for name in NOISE_MEASURES}
    results = gm.compute(
        model,
        (inputs, labels),
        measures=NOISE_MEASURES,
        records=records_for(epoch1),
        seed=5,
        options=options,
    )
    # The documented draw: the first 15 of one permutation from the measure's generator.
    generator = torch.Generator().manual_seed(derive_seed(5, SUBSET_PURPOSE))
    index = torch.randperm(40, generator=generator)[:15]
    assert len(set(index.tolist())) == 15
    for name, reference_model in (("grad-noise-final", model), ("grad-noise-epoch-1", epoch1)):
        expected = gradient_variance_by_loop(reference_model, inputs[index], labels[index])
        assert results[name].value == pytest.approx(expected, rel=1e-10), name
        assert results[name].params == {"grad_noise_samples": 15, "seed": 5}
        assert results[name].extra["n"] == 15
    other_seed = gm.compute(
        model,
        (inputs, labels),
        measures="grad-noise-final",
        seed=6,
        options={"grad-noise-final": {"grad_noise_samples": 15}},
    )
    assert other_seed["grad-noise-final"].value != results["grad-noise-final"].value


def test_grad_noise_samples_equal_to_m_gives_the_full_set_value():
    model = noisy_mlp(0, batchnorm=False)
    data = float64_data()
    full = gm.compute(model, data, measures="grad-noise-final").values["grad-noise-final"]
    every = gm.compute(
        model,
        data,
        measures="grad-noise-final",
        options={"grad-noise-final": {"grad_noise_samples": 40}},
    ).values["grad-noise-final"]
    assert every == pytest.approx(full, rel=1e-12)


@pytest.mark.parametrize("samples", [0, -3, 41, 2.5, True, "10"])
def test_bad_grad_noise_samples_are_rejected(samples):
    with pytest.raises(gm.MeasureError, match=r"grad-noise-final.*grad_noise_samples"):
        gm.compute(
            noisy_mlp(0, batchnorm=False),
            float64_data(),
            measures="grad-noise-final",
            options={"grad-noise-final": {"grad_noise_samples": samples}},
        )


def test_chunks_of_per_example_gradients_stay_within_the_memory_budget():
    assert training._chunk_size(10, batch_size=512) == 512
    per_example = 8 * 1_000_000
    chunk = training._chunk_size(1_000_000, batch_size=512)
    assert chunk * per_example <= training.CHUNK_BYTES < (chunk + 1) * per_example
    assert training._chunk_size(10**9, batch_size=512) == 1


def test_chunking_does_not_change_the_value(monkeypatch):
    model = noisy_mlp(0, batchnorm=True)
    data = float64_data()
    whole = gm.compute(model, data, measures="grad-noise-final").values["grad-noise-final"]
    monkeypatch.setattr(training, "CHUNK_BYTES", 3 * 8 * sum(p.numel() for p in model.parameters()))
    chunked = gm.compute(model, data, measures="grad-noise-final").values["grad-noise-final"]
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_grad_noise_epoch_1_without_an_epoch_1_state_is_undefined():
    records = records_for(None)
    with pytest.warns(gm.GenMeasuresWarning, match="epoch-1 state"):
        result = gm.compute(
            noisy_mlp(0, batchnorm=False),
            float64_data(),
            measures="grad-noise-epoch-1",
            records=records,
        )["grad-noise-epoch-1"]
    assert result.status == "undefined"
    assert math.isnan(result.value)
    assert "first epoch" in result.message and "steps_per_epoch = 5" in result.message


def test_grad_noise_epoch_1_needs_records():
    model, data = noisy_mlp(0, batchnorm=False), float64_data()
    with pytest.raises(gm.MissingInputError, match=r"grad-noise-epoch-1.*training records"):
        gm.compute(model, data, measures="grad-noise-epoch-1")
    with pytest.raises(gm.MissingInputError, match=r"lack 'epoch1_state'"):
        gm.compute(model, data, measures="grad-noise-epoch-1", records={"ce_checks": []})
    results = gm.compute(model, data, measures="grad-noise*")
    assert results["grad-noise-epoch-1"].status == "missing"
    assert math.isnan(results["grad-noise-epoch-1"].value)
    assert results["grad-noise-final"].status == "ok"


def test_an_epoch_1_state_of_another_architecture_is_an_error():
    other = gm.build_model("mlp", (5,), 3, depth=1, width=4, seed=0).double()
    with pytest.raises(gm.ModelError, match=r"grad-noise-epoch-1.*epoch1_state does not fit"):
        gm.compute(
            noisy_mlp(0, batchnorm=False),
            float64_data(),
            measures="grad-noise-epoch-1",
            records=records_for(other),
        )


# ------------------------------------------------------------------------ step counts (63, 64)


def step_values(ce_checks) -> gm.Results:
    model = noisy_mlp(0, batchnorm=False)
    return gm.compute(model, None, measures=STEP_MEASURES, records={"ce_checks": ce_checks})


def test_step_counts_from_hand_built_records():
    checks = [(0, 2.3), (100, 0.5), (200, 0.1), (300, 0.05), (400, 0.0099)]
    results = step_values(checks)
    assert results["num-step-to-0.1-loss"].value == 200  # ĉ_t = 0.1 counts as reached
    assert results["num-step-0.1-to-0.01-loss"].value == 200
    assert results["num-step-0.1-to-0.01-loss"].extra == {"t_0.1": 200, "t_0.01": 400}
    assert all(results[name].params == {} for name in STEP_MEASURES)  # not stochastic: no seed


def test_both_thresholds_crossed_at_the_same_check_give_zero_steps_between():
    results = step_values([[0, 2.3], [100, 0.7], [200, 0.004]])  # pairs as read back from JSON
    assert results["num-step-to-0.1-loss"].value == 200
    assert results["num-step-0.1-to-0.01-loss"].value == 0
    assert results["num-step-0.1-to-0.01-loss"].status == "ok"


def test_a_threshold_never_reached_makes_the_step_counts_undefined():
    with pytest.warns(gm.GenMeasuresWarning, match="never reached 0.01"):
        results = step_values([(0, 2.3), (100, 0.08), (200, 0.02)])
    assert results["num-step-to-0.1-loss"].value == 100
    between = results["num-step-0.1-to-0.01-loss"]
    assert between.status == "undefined" and math.isnan(between.value)
    assert "never reached 0.01" in between.message and "0.02 at t = 200" in between.message

    with pytest.warns(gm.GenMeasuresWarning, match="never reached 0.1"):
        results = step_values([(0, 2.3), (100, 0.5), (200, math.nan)])
    for name in STEP_MEASURES:
        assert results[name].status == "undefined" and math.isnan(results[name].value)
        assert "never reached 0.1 " in results[name].message


def test_step_counts_need_records():
    model = noisy_mlp(0, batchnorm=False)
    for name in STEP_MEASURES:
        with pytest.raises(gm.MissingInputError, match=f"{name}.*training records"):
            gm.compute(model, None, measures=name)
        with pytest.raises(gm.MissingInputError, match="lack 'ce_checks'"):
            gm.compute(model, None, measures=name, records={"epoch1_state": None})
    reported = gm.compute(model, None, measures="num-step-*")
    assert {reported[name].status for name in reported} == {"missing"}


@pytest.mark.parametrize(
    "ce_checks", [[(0,)], [(0, 2.3), ("100", 0.5)], [(-1, 0.5)], [(0.5, 0.5)], "abc", 3]
)
def test_malformed_loss_checks_are_rejected(ce_checks):
    with pytest.raises(gm.MeasureError, match="ce_checks"):
        step_values(ce_checks)


def test_first_step_at_or_below_edge_cases():
    assert first_step_at_or_below([], 0.1) is None
    assert first_step_at_or_below([(0, 2.3), (100, 0.2)], 0.1) is None
    assert first_step_at_or_below([(0, 0.1)], 0.1) == 0  # at the threshold is reached
    assert first_step_at_or_below([(0, 0.05)], 0.1) == 0  # reached before the first update
    assert first_step_at_or_below([(300, 0.01), (100, 0.05), (200, 0.5)], 0.1) == 100
    assert first_step_at_or_below([(0, math.nan), (100, math.inf), (200, 0.1)], 0.1) == 200
    assert first_step_at_or_below([(0, math.nan)], 0.1) is None
    assert first_step_at_or_below(iter([(5, 0.001)]), 0.01) == 5
    step = first_step_at_or_below([(np.int64(4), np.float32(0.0))], 0.1)
    assert step == 4 and type(step) is int
    with pytest.raises(gm.MeasureError, match=r"ce_checks\[1\]"):
        first_step_at_or_below([(0, 1.0), (True, 0.5)], 0.1)


# ---------------------------------------------------------------------------- registration


def test_registration_follows_the_catalog():
    expected = {
        "num-step-to-0.1-loss": ("63", {"records"}, "no"),
        "num-step-0.1-to-0.01-loss": ("64", {"records"}, "no"),
        "grad-noise-epoch-1": ("65", {"data", "records"}, "opt"),
        "grad-noise-final": ("66", {"data"}, "opt"),
    }
    specs = {spec.name: spec for spec in gm.list_measures() if spec.family == "optimization"}
    assert set(specs) == set(expected)
    for name, (eq, needs, stochastic) in expected.items():
        assert (specs[name].eq, set(specs[name].needs), specs[name].stochastic) == (
            eq,
            needs,
            stochastic,
        )
    aliases = {
        "STEP TO 0.1": "num-step-to-0.1-loss",
        "#steps-0.1-loss": "num-step-to-0.1-loss",
        "step between": "num-step-0.1-to-0.01-loss",
        "Step-0.1-to-0.01": "num-step-0.1-to-0.01-loss",
        "grad Var 1 epoch": "grad-noise-epoch-1",
        "grad-noise-epoch1": "grad-noise-epoch-1",
        "Grad Var": "grad-noise-final",
        "grad noise final": "grad-noise-final",
    }
    for alias, name in aliases.items():
        assert gm.get_measure(alias).name == name


def test_the_module_does_not_import_the_zoo():
    tree = ast.parse(inspect.getsource(training))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("genmeasures.zoo")]
