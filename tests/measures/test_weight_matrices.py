"""The weight-matrix measures on networks that cannot be folded, against brute-force references.

``measures/matrices.py`` decides which tensors are weight matrices on any network; these tests
write them out by hand for a transformer block (``tests/reference.py``) and compare in float64.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import genmeasures as gm
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.curvature import hessian_diagonal
from genmeasures.measures.matrices import FOLDED, UNFOLDED
from genmeasures.measures.norms import FISHER_RAO_CHAIN, FISHER_RAO_GENERAL
from networks import NETWORKS
from reference import (
    fisher_rao_by_loop,
    fisher_rao_norm_by_loop,
    loss_hessian,
    parameter_slices,
    transformer_block_matrices,
)

WEIGHT_MEASURES = [
    "param-norm",
    "frob-distance",
    "prod-of-fro",
    "sum-of-fro",
    "fro-over-spec",
    "fro-over-spec-reshaped",
    "spec-dist",
    "spec-dist-reshaped",
    "fisher-rao",
]


def _data(model: nn.Module, count: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(count, *model.input_shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (count,), generator=generator)
    return inputs, labels


def _context(model: nn.Module) -> MeasureContext:
    return MeasureContext(
        model,
        None,
        None,
        init_model=None,
        records=None,
        seed=0,
        device=torch.device("cpu"),
        batch_size=8,
        input_shape=tuple(model.input_shape),
    )


@pytest.fixture(scope="module")
def transformer_results():
    model, init = NETWORKS["transformer_block"](0), NETWORKS["transformer_block"](1)
    data = _data(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gm.GenMeasuresWarning)
        results = gm.compute(model, data, init_model=init, measures=WEIGHT_MEASURES, seed=0)
    return model, init, data, results


def test_the_transformer_blocks_weight_matrices_are_the_hand_written_ones():
    model = NETWORKS["transformer_block"](0)
    listed = _context(model).weight_matrices
    expected = transformer_block_matrices(model)
    assert [m.name for m in listed] == [name for name, _ in expected]
    for matrix, (name, reference) in zip(listed, expected, strict=True):
        assert torch.equal(matrix.matrix.double(), reference), name


def test_norm_measures_on_a_transformer_equal_plain_sums(transformer_results):
    model, init, _, results = transformer_results
    w = [matrix for _, matrix in transformer_block_matrices(model)]
    w0 = [matrix for _, matrix in transformer_block_matrices(init)]
    fro = np.array([float(m.norm()) for m in w])
    spec = np.array([float(torch.linalg.svdvals(m)[0]) for m in w])
    dist_spec = np.array(
        [float(torch.linalg.svdvals(m - m0)[0]) for m, m0 in zip(w, w0, strict=True)]
    )
    d = len(w)
    expected = {
        "param-norm": sum(float((m**2).sum()) for m in w),
        "frob-distance": sum(float(((m - m0) ** 2).sum()) for m, m0 in zip(w, w0, strict=True)),
        "prod-of-fro": float(np.prod(fro**2)),
        "sum-of-fro": d * float(np.prod(fro**2)) ** (1 / d),
        "fro-over-spec": float(np.sum(fro**2 / spec**2)),
        "fro-over-spec-reshaped": float(np.sum(fro**2 / spec**2)),
        "spec-dist": float(np.sum(dist_spec**2)),
        "spec-dist-reshaped": float(np.sum(dist_spec**2)),
    }
    for name, value in expected.items():
        result = results[name]
        assert result.status == "ok", (name, result.message)
        assert result.value == pytest.approx(value, rel=1e-12), name
        assert result.extra["weights"] == UNFOLDED, name


def test_fisher_rao_on_a_transformer_is_liang_et_als_norm(transformer_results):
    model, _, (inputs, labels), results = transformer_results
    weights = [model.attn.in_proj_weight, model.attn.out_proj.weight]
    weights += [model.mlp[0].weight, model.mlp[2].weight, model.head.weight]
    result = results["fisher-rao"]
    assert result.extra["definition"] == FISHER_RAO_GENERAL
    reference = fisher_rao_norm_by_loop(model.eval(), weights, inputs, labels)
    assert result.value == pytest.approx(reference, rel=1e-10)


def test_fisher_rao_on_a_layernorm_network_against_a_per_example_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)).double()
    model.input_shape = (4,)
    inputs, labels = _data(model, 10)
    result = gm.compute(model, (inputs, labels), measures="fisher-rao")["fisher-rao"]
    reference = fisher_rao_norm_by_loop(model, [model[0].weight, model[3].weight], inputs, labels)
    assert result.status == "ok"
    assert result.extra == {"weights": UNFOLDED, "definition": FISHER_RAO_GENERAL}
    assert result.value == pytest.approx(reference, rel=1e-10)


def test_fisher_rao_keeps_eq_45_on_a_chain_and_drops_the_depth_factor_elsewhere():
    chain = NETWORKS["tanh_mlp"](0)
    inputs, labels = _data(chain, 10)
    result = gm.compute(chain, (inputs, labels), measures="fisher-rao")["fisher-rao"]
    weights = [chain[0].weight, chain[2].weight, chain[4].weight]
    assert result.extra == {"weights": FOLDED, "definition": FISHER_RAO_CHAIN}
    assert result.value == pytest.approx(
        fisher_rao_by_loop(chain, weights, inputs, labels), rel=1e-10
    )
    residual = NETWORKS["residual_mlp"](0)
    result = gm.compute(residual, (inputs, labels), measures="fisher-rao")["fisher-rao"]
    weights = [residual.inp.weight, residual.fc1.weight, residual.fc2.weight, residual.out.weight]
    assert result.extra == {"weights": FOLDED, "definition": FISHER_RAO_GENERAL}
    assert result.value == pytest.approx(
        fisher_rao_norm_by_loop(residual, weights, inputs, labels), rel=1e-10
    )


class TinyViT(nn.Module):
    """Token embedding + position embedding + class token + a custom matrix used as ``x @ W``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.pos = nn.Parameter(torch.randn(1, 3, 6))
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.proj = nn.Parameter(torch.randn(6, 4))  # in × out, used as h @ proj
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens) + self.pos
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        return self.head(self.norm(h @ self.proj)[:, 0])


def test_additive_parameters_do_not_count_and_multiplied_ones_are_out_by_in():
    model = TinyViT().double()
    model.input_shape = (3,)
    listed = {m.name: m for m in _context(model).weight_matrices}
    assert list(listed) == ["emb", "proj", "head"]  # not pos, cls, norm.*, biases
    assert torch.equal(listed["emb"].matrix, model.emb.weight.T)  # dim × vocabulary
    assert torch.equal(listed["proj"].matrix, model.proj.T)
    tokens = torch.randint(0, 10, (12, 3), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))
    results = gm.compute(model, (tokens, labels), measures=["param-norm", "fro-over-spec"])
    expected = sum(
        float((p.double() ** 2).sum()) for p in (model.emb.weight.detach(), model.proj.detach())
    )
    expected += float((model.head.weight.detach() ** 2).sum())
    assert results["param-norm"].value == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(results["fro-over-spec"].value)


def test_the_exact_hessian_diagonal_of_a_transformers_matrices_against_the_full_hessian():
    model = NETWORKS["transformer_block"](0).eval()
    inputs, labels = _data(model, 6)
    ctx = MeasureContext(
        model,
        inputs,
        labels,
        init_model=None,
        records=None,
        seed=0,
        device=torch.device("cpu"),
        batch_size=4,
        input_shape=tuple(model.input_shape),
    )
    estimates = hessian_diagonal(ctx, "exact")
    with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no second derivative
        diagonal = loss_hessian(model, inputs, labels).diagonal()
    slices = parameter_slices(model)
    embed = model.attn.embed_dim

    def entries(name: str) -> torch.Tensor:
        return diagonal[slices[name]].reshape(dict(model.named_parameters())[name].shape)

    packed = entries("attn.in_proj_weight")
    expected = [packed[:embed], packed[embed : 2 * embed], packed[2 * embed :]]
    expected += [entries(f"{n}.weight") for n in ("attn.out_proj", "mlp.0", "mlp.2", "head")]
    assert len(estimates) == len(expected)
    for estimate, reference in zip(estimates, expected, strict=True):
        torch.testing.assert_close(estimate, reference.double(), rtol=1e-9, atol=1e-12)


def test_normalized_sharpness_on_a_transformer_reads_the_same_matrices(transformer_results):
    model, _, data, _ = transformer_results
    names = [
        "normalized-sharpness",
        "normalized-sharpness-arxiv",
        "normalized-sharpness-param",
        "hessian-weighted-norm",
    ]
    results = gm.compute(model, data, measures=names, options={n: {"probes": 4} for n in names})
    layers = [name for name, _ in transformer_block_matrices(model)]
    for name in names:
        result = results[name]
        assert result.status == "ok", (name, result.message)
        assert math.isfinite(result.value)
        assert list(result.per_layer["layer"]) == layers
        assert result.extra["estimator"] == "scale-invariant"  # not piecewise linear
        assert result.extra["weights"] == UNFOLDED
    table = results["normalized-sharpness"].per_layer
    assert not table["rescaling_symmetry"].any()
    assert results["normalized-sharpness"].extra["rescaling_invariant"] is False
