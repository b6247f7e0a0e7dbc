"""Representation-based measures of the NeurIPS 2020 PGDL competition's winners.

Four measures read the network's internal representation of the training set, or its outputs on
mixed training inputs:

- ``db-index``: the Davies-Bouldin index of the penultimate-layer features, with the classes as
  clusters (Natekar & Sharma 2020, arXiv 2012.02775; Davies & Bouldin 1979);
- ``mixup-error``: one minus the accuracy on inputs mixed within each class (label-wise mixup,
  Natekar & Sharma 2020);
- ``db-times-mixup``: their product, the competition's first-place entry;
- ``label-variation``: the variation of the labels over a k-nearest-neighbour graph of the
  penultimate-layer features of mixed inputs (Lassance et al. 2020, arXiv 2011.12737; their
  third-place entry "VPM").

**The penultimate layer** of a network is the input of its last weight layer (an ``nn.Linear`` or
``nn.Conv1d/2d/3d`` module, the last one to run in the forward pass), flattened per example, read
with a forward hook. It is defined when that layer runs once per forward pass, its input and
output have the batch as their first dimension, and it has one output (unit or channel) per
logit, i.e. it is the classification head; otherwise the measures are ``unsupported``, naming the
layer and the reason. A Hugging Face classifier's penultimate layer is the input of the Linear
layer of its classification head.

Every measure is oriented as a complexity: a larger value predicts a larger generalization gap.
Randomness (pairs, subsets, mixing coefficients) comes only from ``ctx.generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genmeasures.errors import MeasureError, UnsupportedInputError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.features import (
    LAYERS,
    FeatureLayer,
    feature_batches,
    feature_layer,
    features_of,
)
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput, UndefinedMeasure
from genmeasures.validation import Integer, OneOf, Real, Settings, setting

__all__ = [
    "FeatureLayer",
    "davies_bouldin",
    "feature_layer",
    "features_of",
    "label_variation",
    "label_variation_draws",
    "mixup_accuracy",
    "same_class_pairs",
]

#: Family name of these measures in the catalog.
FAMILY = "representation"


#: The features of the whole training set are kept in memory (float64) up to this many bytes;
#: above it the Davies-Bouldin index recomputes them in its second pass.
FEATURE_CACHE_BYTES = 256 * 2**20

#: Rows of the similarity matrix computed at once by the k-nearest-neighbour search.
KNN_BLOCK = 1024

#: Purposes of the random streams (``ctx.generator``).
PAIRS_PURPOSE = "mixup-error/pairs"
GRAPH_PURPOSE = "label-variation/graph"


# ------------------------------------------------------------------------------------ options


def _lam() -> Any:
    return setting(
        0.5,
        Real(0.0, 1.0, open_minimum=True, open_maximum=True),
        "mixing coefficient λ: an example is λ·x_i + (1 − λ)·x_j, x_j of the same class",
    )


def _layer() -> Any:
    return setting(
        "penultimate",
        OneOf(LAYERS),
        "features of the Davies-Bouldin index: penultimate, the input of the last weight layer; "
        "first, the output of the first weight layer, feature maps max-pooled over 4×4 windows "
        "(the Natekar & Sharma code)",
    )


@dataclass(frozen=True)
class DaviesBouldinOptions(Settings):
    """Options of ``db-index``."""

    WHERE = "db-index options"
    ERROR = MeasureError

    layer: str = _layer()


@dataclass(frozen=True)
class MixupOptions(Settings):
    """Options of ``mixup-error``."""

    WHERE = "mixup-error options"
    ERROR = MeasureError

    lam: float = _lam()


@dataclass(frozen=True)
class ProductOptions(Settings):
    """Options of ``db-times-mixup``: those of its two factors."""

    WHERE = "db-times-mixup options"
    ERROR = MeasureError

    layer: str = _layer()
    lam: float = _lam()


@dataclass(frozen=True)
class LabelVariationOptions(Settings):
    """Options of ``label-variation``."""

    WHERE = "label-variation options"
    ERROR = MeasureError

    k: int = setting(1, Integer(1), "neighbours of each example in the graph")
    examples: int = setting(
        500,
        Integer(2),
        "examples per graph: ⌊examples / classes⌋ of each class (all of a smaller class), drawn "
        "with the seed",
    )
    mixup_alpha: float = setting(
        2.0,
        Real(0.0),
        "inputs and one-hot labels mixed with a random partner, λ ~ Beta(α, α); 0: no mixup",
    )
    graphs: int = setting(1, Integer(1), "graphs drawn; the value is their median")


# ---------------------------------------------------------------------------- Davies-Bouldin


@dataclass(frozen=True)
class DaviesBouldin:
    """The Davies-Bouldin index and the quantities it is made of.

    Attributes:
        value: The index, the mean over classes of the largest ``(s_i + s_j) / d_ij``.
        scatter: ``s_i``, the mean distance of class i's features to their centroid.
        separation: ``d_ij``, the distances between class centroids.
        classes: The labels present, in increasing order.
        dimension: The number of features.
    """

    value: float
    scatter: np.ndarray
    separation: np.ndarray
    classes: np.ndarray
    dimension: int


def davies_bouldin(ctx: MeasureContext, layer: FeatureLayer) -> DaviesBouldin:
    """The Davies-Bouldin index of the training features at ``layer``, classes as clusters.

    The definition of ``sklearn.metrics.davies_bouldin_score`` (Davies & Bouldin 1979), computed
    in float64 in two passes over the training set (centroids, then distances to them), so that
    only one batch of features is in memory when they do not fit in ``FEATURE_CACHE_BYTES``.

    Raises:
        UndefinedMeasure: with fewer than two classes, or two classes whose centroids coincide
            (the index divides by their distance).
    """
    inputs, labels = ctx.require_data()
    classes, index = torch.unique(labels, sorted=True, return_inverse=True)
    count = len(classes)
    if count < 2:
        raise UndefinedMeasure(
            f"the training labels hold {count} class: the Davies-Bouldin index needs two"
        )
    sizes = torch.bincount(index, minlength=count).to(torch.float64)
    kept: list[torch.Tensor] | None = []
    sums: torch.Tensor | None = None
    start = 0
    for features in feature_batches(ctx, layer, inputs):
        rows = index[start : start + len(features)]
        start += len(features)
        if sums is None:
            sums = torch.zeros(count, features.shape[1], dtype=torch.float64, device=ctx.device)
        sums.index_add_(0, rows, features)
        if kept is not None:
            kept.append(features)
            if features.shape[1] * 8 * start > FEATURE_CACHE_BYTES:
                kept = None
    assert sums is not None  # compute() checks that there are at least two examples
    centroids = sums / sizes[:, None]
    batches = kept if kept is not None else feature_batches(ctx, layer, inputs)
    distances = torch.zeros(count, dtype=torch.float64, device=ctx.device)
    start = 0
    for features in batches:
        rows = index[start : start + len(features)]
        start += len(features)
        distances.index_add_(0, rows, (features - centroids[rows]).norm(dim=1))
    scatter = distances / sizes
    separation = torch.cdist(centroids, centroids)
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=ctx.device)
    if (separation[off_diagonal] == 0).any():
        i, j = [int(v) for v in torch.nonzero((separation == 0) & off_diagonal)[0]]
        raise UndefinedMeasure(
            f"classes {int(classes[i])} and {int(classes[j])} have the same centroid at the "
            f"{layer.describe()}: the Davies-Bouldin index divides by their distance"
        )
    ratios = (scatter[:, None] + scatter[None, :]) / separation
    ratios = ratios.masked_fill(~off_diagonal, -math.inf)
    value = float(ratios.max(dim=1).values.mean())
    return DaviesBouldin(
        value=value,
        scatter=scatter.cpu().numpy(),
        separation=separation.cpu().numpy(),
        classes=classes.cpu().numpy(),
        dimension=int(sums.shape[1]),
    )


def _cached_davies_bouldin(ctx: MeasureContext, which: str) -> tuple[FeatureLayer, DaviesBouldin]:
    def compute() -> tuple[FeatureLayer, DaviesBouldin]:
        layer = feature_layer(ctx, which)
        return layer, davies_bouldin(ctx, layer)

    return ctx.cached(("representation/db", which), compute)


# ----------------------------------------------------------------------------------- mixup


def same_class_pairs(
    labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded pairs ``(i, j)`` of distinct training examples of the same class.

    Each class with at least two examples is put in a random order ``p_0, ..., p_{n-1}`` (one
    ``randperm`` from ``generator`` per class, classes in increasing order), and each example is
    paired with the next one in that cycle: ``(p_t, p_{t+1 mod n})``. Every example of such a
    class is the first element of exactly one pair, and never paired with itself.

    Returns:
        ``(first, second)``, index tensors on the CPU, grouped by class.
    """
    labels = labels.cpu()
    first, second = [], []
    for label in torch.unique(labels, sorted=True):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < 2:
            continue
        order = torch.randperm(len(members), generator=generator, device=generator.device)
        cycle = members[order.cpu()]
        first.append(cycle)
        second.append(cycle.roll(-1))
    if not first:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(first), torch.cat(second)


@dataclass(frozen=True)
class MixupAccuracy:
    """Label-wise mixup accuracy.

    Attributes:
        accuracy: The mean over classes of each class's accuracy on its mixed pairs.
        per_class: Class label → accuracy on that class's pairs.
        pairs: The number of mixed examples classified.
    """

    accuracy: float
    per_class: dict[int, float]
    pairs: int


def _require_real_inputs(inputs: torch.Tensor, measure: str) -> None:
    if not inputs.is_floating_point():
        raise UnsupportedInputError(
            f"the inputs are {inputs.dtype} (e.g. token ids): {measure} mixes two inputs, "
            "λ·x_i + (1 − λ)·x_j, which needs real-valued inputs"
        )


def mixup_accuracy(
    ctx: MeasureContext,
    lam: float,
    pairs: tuple[torch.Tensor, torch.Tensor],
    measure: str = "mixup-error",
) -> MixupAccuracy:
    """Accuracy of the network on ``λ·x_i + (1 − λ)·x_j`` labelled ``y_i`` (= ``y_j``).

    Args:
        ctx: The measure context.
        lam: λ.
        pairs: ``(first, second)`` from :func:`same_class_pairs`.
        measure: The measure named in messages.

    Raises:
        UnsupportedInputError: for integer inputs (token ids), which cannot be mixed.
        UndefinedMeasure: when no class has two examples.
    """
    inputs, labels = ctx.require_data()
    _require_real_inputs(inputs, measure)
    first, second = (p.to(ctx.device) for p in pairs)
    if len(first) == 0:
        raise UndefinedMeasure("no class has two training examples to mix")
    correct = torch.empty(len(first), dtype=torch.bool, device=ctx.device)
    for start in range(0, len(first), ctx.batch_size):
        i = first[start : start + ctx.batch_size]
        j = second[start : start + ctx.batch_size]
        mixed = lam * inputs[i] + (1.0 - lam) * inputs[j]
        with torch.no_grad():
            predicted = ctx.model(mixed).argmax(dim=1)
        correct[start : start + len(i)] = predicted == labels[i]
    pair_labels = labels[first]
    per_class = {}
    for label in torch.unique(pair_labels, sorted=True):
        hits = correct[pair_labels == label]
        per_class[int(label)] = float(hits.double().mean())
    accuracy = float(np.mean(list(per_class.values())))
    return MixupAccuracy(accuracy=accuracy, per_class=per_class, pairs=len(first))


def _cached_mixup(ctx: MeasureContext, lam: float, measure: str) -> MixupAccuracy:
    def compute() -> MixupAccuracy:
        _require_real_inputs(ctx.require_data()[0], measure)
        pairs = same_class_pairs(ctx.require_data()[1], ctx.generator(PAIRS_PURPOSE))
        return mixup_accuracy(ctx, lam, pairs, measure)

    return ctx.cached(("representation/mixup", lam), compute)


# ------------------------------------------------------------------------- label variation


@dataclass(frozen=True)
class GraphDraws:
    """The random draws of one label-variation graph.

    Attributes:
        subset: Indices of the training examples in the graph, grouped by class.
        partner: For each node, the position (in ``subset``) of the example it is mixed with.
        lam: Each node's mixing coefficient λ, float64; None without mixup.
    """

    subset: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor | None


def label_variation_draws(
    labels: torch.Tensor, examples: int, mixup_alpha: float, generator: torch.Generator
) -> GraphDraws:
    """Draw one graph's examples and mixing partners and coefficients.

    A class-balanced subset: ``⌊examples / C⌋`` examples (at least one) of each of the ``C``
    classes present, drawn without replacement, all of a class that has fewer. Each node is
    mixed with a uniformly random node (a random permutation of the subset, as in mixup) with
    λ ~ Beta(α, α), drawn by numpy from a seed drawn from ``generator``.
    """
    labels = labels.cpu()
    classes = torch.unique(labels, sorted=True)
    quota = max(1, examples // len(classes))
    chosen = []
    for label in classes:
        members = torch.nonzero(labels == label).flatten()
        order = torch.randperm(len(members), generator=generator, device=generator.device)
        chosen.append(members[order.cpu()[:quota]])
    subset = torch.cat(chosen)
    if mixup_alpha == 0:
        return GraphDraws(subset=subset, partner=torch.arange(len(subset)), lam=None)
    partner = torch.randperm(len(subset), generator=generator, device=generator.device).cpu()
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    lam = np.random.default_rng(seed).beta(mixup_alpha, mixup_alpha, size=len(subset))
    return GraphDraws(subset=subset, partner=partner, lam=torch.from_numpy(lam))


def label_variation(features: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """The variation of ``targets`` over the k-nearest-neighbour graph of ``features``.

    The graph links each node i to the k other nodes whose features have the largest cosine
    similarity with its own (ties broken by the lower index; a zero feature vector has similarity
    0 with every other). Its adjacency A is unweighted and directed, every node has out-degree
    D = k, and the variation is the trace of the normalized Laplacian's quadratic form per node:

        σ = tr(Yᵀ (I − D^{-1/2} A D^{-1/2}) Y) / n
          = (1/n) Σ_i (‖y_i‖² − (1/k) Σ_{j ∈ N_k(i)} ⟨y_i, y_j⟩)

    which, for one-hot labels, is the mean fraction of a node's neighbours of another class.

    Args:
        features: ``(n, d)`` features, float64.
        targets: ``(n, classes)`` label vectors (one-hot or mixed), float64.
        k: Neighbours per node, ``1 <= k < n``.
    """
    n = len(features)
    unit = F.normalize(features, dim=1)
    total = torch.zeros((), dtype=torch.float64, device=features.device)
    for start in range(0, n, KNN_BLOCK):
        rows = torch.arange(start, min(start + KNN_BLOCK, n), device=features.device)
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows), device=features.device), rows] = -math.inf
        order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
        neighbours = order[:, :k]
        own = targets[rows]
        agreement = (own[:, None, :] * targets[neighbours]).sum(dim=2).mean(dim=1)
        total += (own.pow(2).sum(dim=1) - agreement).sum()
    return float(total) / n


def _graph_value(
    ctx: MeasureContext, layer: FeatureLayer, draws: GraphDraws, k: int
) -> tuple[float, int]:
    inputs, labels = ctx.require_data()
    subset = draws.subset.to(ctx.device)
    partner = draws.partner.to(ctx.device)
    x = inputs[subset]
    classes = int(labels.max()) + 1
    y = F.one_hot(labels[subset], classes).to(torch.float64)
    if draws.lam is not None:
        lam = draws.lam.to(ctx.device)
        shape = (-1,) + (1,) * (x.ndim - 1)
        x = lam.to(x.dtype).view(shape) * x + (1 - lam.to(x.dtype)).view(shape) * x[partner]
        y = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
    n = len(subset)
    if k >= n:
        raise UndefinedMeasure(
            f"a graph of {n} examples has no {k} neighbours per example: lower k or raise examples"
        )
    return label_variation(features_of(ctx, layer, x), y, k), n


# -------------------------------------------------------------------------------- measures


@register_measure(
    "db-index",
    eq="-",
    family=FAMILY,
    needs=("data",),
    aliases=("davies-bouldin", "davies bouldin index", "dbi"),
    options=DaviesBouldinOptions,
    description="Davies-Bouldin index of the penultimate-layer features with the classes as "
    "clusters (Natekar & Sharma 2020, arXiv 2012.02775)",
    domain="differentiable",
)
def db_index(ctx: MeasureContext, *, options: DaviesBouldinOptions) -> MeasureOutput:
    """Davies-Bouldin index of the training features, classes as clusters."""
    layer, index = _cached_davies_bouldin(ctx, options.layer)
    return MeasureOutput(
        value=index.value,
        extra={
            "layer": layer.describe(),
            "features": index.dimension,
            "classes": len(index.classes),
        },
    )


@register_measure(
    "mixup-error",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("label-wise mixup", "labelwise-mixup", "mixup"),
    options=MixupOptions,
    description="1 − accuracy on training inputs mixed within each class, λ = 0.5 (label-wise "
    "mixup; Natekar & Sharma 2020, arXiv 2012.02775)",
    domain="differentiable",
)
def mixup_error(ctx: MeasureContext, *, options: MixupOptions) -> MeasureOutput:
    """One minus the accuracy on training inputs mixed within each class."""
    mixup = _cached_mixup(ctx, options.lam, "mixup-error")
    return MeasureOutput(
        value=1.0 - mixup.accuracy,
        extra={"accuracy": mixup.accuracy, "pairs": mixup.pairs, "per_class": mixup.per_class},
    )


@register_measure(
    "db-times-mixup",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("db*mixup", "davies-bouldin-times-mixup", "davies bouldin * label-wise mixup"),
    options=ProductOptions,
    description="db-index × mixup-error, the first-place entry of the NeurIPS 2020 PGDL "
    "competition (Natekar & Sharma 2020, arXiv 2012.02775)",
    domain="differentiable",
)
def db_times_mixup(ctx: MeasureContext, *, options: ProductOptions) -> MeasureOutput:
    """The Davies-Bouldin index times the label-wise mixup error."""
    mixup = _cached_mixup(ctx, options.lam, "db-times-mixup")
    layer, index = _cached_davies_bouldin(ctx, options.layer)
    error = 1.0 - mixup.accuracy
    return MeasureOutput(
        value=index.value * error,
        extra={"db_index": index.value, "mixup_error": error, "layer": layer.describe()},
    )


@register_measure(
    "label-variation",
    eq="-",
    family=FAMILY,
    needs=("data",),
    stochastic="yes",
    aliases=("vpm", "lgg-label-variation", "label variation"),
    options=LabelVariationOptions,
    description="Variation of the (mixed) labels over a k-NN graph of penultimate-layer features "
    "(Lassance et al. 2020, arXiv 2011.12737, entry VPM)",
    domain="differentiable",
)
def label_variation_measure(
    ctx: MeasureContext, *, options: LabelVariationOptions
) -> MeasureOutput:
    """Label variation over a k-NN graph of penultimate-layer features."""
    inputs, labels = ctx.require_data()
    if options.mixup_alpha > 0:
        _require_real_inputs(inputs, "label-variation (with mixup_alpha > 0)")
    layer = feature_layer(ctx, "penultimate")
    values, sizes = [], []
    for graph in range(options.graphs):
        draws = label_variation_draws(
            labels, options.examples, options.mixup_alpha, ctx.generator(GRAPH_PURPOSE, graph)
        )
        value, size = _graph_value(ctx, layer, draws, options.k)
        values.append(value)
        sizes.append(size)
    return MeasureOutput(
        value=float(np.median(values)),
        extra={"layer": layer.describe(), "examples": sizes[0], "graph_values": values},
    )
