"""The per-model state that measures share: folded network, data, generators and caches.

One :class:`MeasureContext` is built per model by :func:`genmeasures.compute`. Every quantity
several measures use (logits, margins, the folded network and its weight layers, per-layer norms,
input norm B) is computed at most once and cached here (``MEASURES.md`` §1.5, last bullet).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from genmeasures.errors import (
    MeasureError,
    MissingInputError,
    ModelError,
    NumericalError,
    UnsupportedLayerError,
)
from genmeasures.measures import matrices
from genmeasures.measures.inputs import LogitsOf, OutputFn, logits_selector
from genmeasures.measures.matrices import WeightMatrix
from genmeasures.measures.result import UndefinedMeasure
from genmeasures.models import Architecture, WeightLayer, describe, fold_batchnorm, weight_layers
from genmeasures.seeding import derive_seed

T = TypeVar("T")

#: Failure probability δ of every bound (``MEASURES.md`` §1.1).
DELTA = 0.01

#: The margin is the k-th smallest training margin with k = max(1, ⌊m / MARGIN_QUANTILE_DIVISOR⌋).
MARGIN_QUANTILE_DIVISOR = 10


class MeasureContext:
    """State shared between the measures computed for one model.

    Args:
        model: The trained network. It is deep-copied onto ``device`` and put in eval mode; the
            caller's model is never modified.
        inputs: Training inputs ``(m, *input_shape)``, as fed to the network, or None.
        labels: Training labels ``(m,)``, or None.
        init_model: The network before the first optimizer update, or None.
        records: Training-time records (``MEASURES.md`` §2.5), or None.
        seed: Seed of every random stream.
        device: Where to compute; defaults to the model's device.
        batch_size: Examples per forward pass.
        input_shape: Shape of one input; defaults to the data's, then ``model.input_shape``.
        dtype: The floating dtype the copies compute in (the model's; float32 for half
            precision: :func:`~genmeasures.measures.inputs.computation_dtype`).
        output_fn: Selects the logits from the model's output, if it is not a tensor
            (:func:`~genmeasures.measures.inputs.logits_selector`).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor | None,
        labels: torch.Tensor | None,
        *,
        init_model: nn.Module | None,
        records: dict[str, Any] | None,
        seed: int,
        device: torch.device,
        batch_size: int,
        input_shape: tuple[int, ...] | None,
        dtype: torch.dtype | None = None,
        output_fn: OutputFn | None = None,
    ) -> None:
        self.model = _frozen_copy(model, device, dtype)
        self.init_model = None if init_model is None else _frozen_copy(init_model, device, dtype)
        self.inputs = None if inputs is None else inputs.to(device)
        if self.inputs is not None:
            select = logits_selector(self.model, self.inputs[:1], output_fn)
            if select is not None:
                self.model = LogitsOf(self.model, select)
                if self.init_model is not None:
                    self.init_model = LogitsOf(self.init_model, select)
        self.labels = None if labels is None else labels.to(device)
        self.records = records
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.input_shape = input_shape
        self._cache: dict[Hashable, Any] = {}

    # ------------------------------------------------------------------ plumbing

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """Return the cached value under ``key``, computing and storing it on first use."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def generator(self, purpose: str, index: int = 0) -> torch.Generator:
        """A fresh generator on the model's device for one random stream (:func:`derive_seed`)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, purpose, index))
        return generator

    def require_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the training set, or raise :class:`MissingInputError`."""
        if self.inputs is None or self.labels is None:
            raise MissingInputError(
                "this measure needs the training set: pass data=(inputs, labels)"
            )
        return self.inputs, self.labels

    def require_shape(self) -> tuple[int, ...]:
        """Return the shape of one input, or raise :class:`MissingInputError`."""
        if self.input_shape is None:
            raise MissingInputError(
                "this measure needs the shape of one input: pass data, or build the model with "
                "genmeasures.build_model (which records model.input_shape)"
            )
        return self.input_shape

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the training set in batches of ``batch_size``, in order."""
        inputs, labels = self.require_data()
        for start in range(0, len(labels), self.batch_size):
            yield inputs[start : start + self.batch_size], labels[start : start + self.batch_size]

    @property
    def num_train(self) -> int:
        """m, the number of training examples."""
        return len(self.require_data()[1])

    # ------------------------------------------------------------------ outputs

    @property
    def logits(self) -> torch.Tensor:
        """Eval-mode logits of the (unfolded) model on the whole training set, in float64."""

        def compute() -> torch.Tensor:
            with torch.no_grad():
                chunks = [self.model(x).double() for x, _ in self.batches()]
            logits = torch.cat(chunks)
            if logits.ndim != 2:
                raise ModelError(
                    "the model must output logits of shape (batch, classes), "
                    f"got {tuple(logits.shape)}"
                )
            if not torch.isfinite(logits).all():
                raise NumericalError("the model produces non-finite logits on the training set")
            largest_label = int(self.require_data()[1].max())
            if largest_label >= logits.shape[1]:
                raise MeasureError(
                    f"label {largest_label} is out of range for a model with "
                    f"{logits.shape[1]} outputs"
                )
            return logits

        return self.cached("logits", compute)

    @property
    def num_classes(self) -> int:
        """κ, the network's output dimension."""
        return self.logits.shape[1]

    @property
    def margins(self) -> torch.Tensor:
        """Per-example margins ``f(X)[y] − max_{c≠y} f(X)[c]`` (``MEASURES.md`` §2.1), float64."""

        def compute() -> torch.Tensor:
            logits, labels = self.logits, self.require_data()[1]
            if logits.shape[1] < 2:
                raise ModelError("margins need at least two outputs (classes)")
            correct = logits.gather(1, labels[:, None]).squeeze(1)
            others = logits.scatter(1, labels[:, None], -math.inf)
            return correct - others.max(dim=1).values

        return self.cached("margins", compute)

    @property
    def margin(self) -> float:
        """γ: the k-th smallest margin, k = max(1, ⌊m/10⌋), sign kept (``MEASURES.md`` §2.1)."""

        def compute() -> float:
            margins = self.margins
            k = max(1, len(margins) // MARGIN_QUANTILE_DIVISOR)
            return float(torch.kthvalue(margins.cpu(), k).values)

        return self.cached("margin", compute)

    @property
    def positive_margin(self) -> float:
        """γ, for the measures that contain it.

        Raises:
            UndefinedMeasure: if γ ≤ 0; the measure is then NaN with a warning (§2.1). The sign
                is never flipped.
        """
        if self.margin <= 0:
            raise UndefinedMeasure(
                f"margin γ = {self.margin:.4g} ≤ 0 for {type(self.model).__name__} (at least 10% "
                "of the training examples are misclassified or tied): measures containing γ are NaN"
            )
        return self.margin

    @property
    def input_norm_max(self) -> float:
        """B: the largest ℓ2 norm of a training input as fed to the network (§2.2)."""
        inputs = self.require_data()[0]
        return self.cached(
            "input_norm_max", lambda: float(inputs.flatten(1).double().norm(dim=1).max())
        )

    # ------------------------------------------------------------------ weights

    @property
    def architecture(self) -> Architecture:
        """The analysis of the unfolded network (:func:`genmeasures.describe`), made once."""
        example = None if self.inputs is None else self.inputs[:2]
        return self.cached(
            "architecture", lambda: describe(self.model, self.input_shape, example=example)
        )

    @property
    def architecture_layers(self) -> list[WeightLayer]:
        """Weight layers of the unfolded model, for measures that read only shapes."""
        return self.cached(
            "architecture_layers", lambda: _checked_layers(self.model, self.input_shape, "model")
        )

    @property
    def folded_model(self) -> nn.Module:
        """The BN-folded model in eval mode (``MEASURES.md`` §1.2).

        Raises:
            UnsupportedLayerError: if a BatchNorm cannot be folded or a layer is unsupported.
        """
        return self._folded[0]

    @property
    def layers(self) -> list[WeightLayer]:
        """Weight layers of the BN-folded model in forward order (``MEASURES.md`` §1.2)."""
        return self._folded[1]

    @property
    def foldable(self) -> bool:
        """Whether the network folds and lists its weight layers (``MEASURES.md`` §1.2).

        Raises:
            ModelError: for a model without any weight layer, or with a non-finite weight (only
                an :class:`~genmeasures.errors.UnsupportedLayerError` means "cannot be folded").
        """

        def compute() -> bool:
            try:
                self.layers  # noqa: B018  (folds the model and lists its weight layers)
            except UnsupportedLayerError:
                return False
            return True

        return self.cached("foldable", compute)

    @property
    def _folded(self) -> tuple[nn.Module, list[WeightLayer]]:
        def compute() -> tuple[nn.Module, list[WeightLayer]]:
            folded = fold_batchnorm(self.model, self.input_shape)
            return folded, _checked_layers(folded, self.input_shape, "model")

        return self.cached("folded", compute)

    def require_init_model(self) -> nn.Module:
        """The initial model, or :class:`MissingInputError` naming what to pass."""
        if self.init_model is None:
            raise MissingInputError(
                "this measure needs the initial weights: pass init_model= (the network as it "
                "was before the first optimizer update)"
            )
        return self.init_model

    def initial_parameter(self, name: str, shape: torch.Size) -> torch.Tensor:
        """``init_model``'s parameter ``name``, which has the trained parameter's ``shape``.

        Raises:
            MissingInputError: without an initial model.
            ModelError: if ``init_model`` lacks the parameter or has it in another shape.
        """
        initial = dict(self.require_init_model().named_parameters()).get(name)
        if initial is None:
            raise ModelError(f"parameter {name!r} of the trained model is not in init_model")
        if initial.shape != shape:
            raise ModelError(
                f"parameter {name!r}: shape {tuple(shape)} in the trained model, "
                f"{tuple(initial.shape)} in init_model"
            )
        return initial

    @property
    def init_layers(self) -> list[WeightLayer]:
        """Weight layers of the folded initial model, matched to :attr:`layers` by position.

        Raises:
            MissingInputError: without an initial model.
            ModelError: if the layer count or shapes differ from the trained model's.
        """

        def compute() -> list[WeightLayer]:
            trained = self.layers  # an unsupported architecture is reported before a missing input
            folded = fold_batchnorm(self.require_init_model(), self.input_shape)
            init = _checked_layers(folded, self.input_shape, "init_model")
            if len(init) != len(trained):
                raise ModelError(
                    f"init_model has {len(init)} weight layers, the trained model {len(trained)}"
                )
            for layer, initial in zip(trained, init, strict=True):
                if layer.weight.shape != initial.weight.shape:
                    raise ModelError(
                        f"weight layer {layer.name!r}: shape {tuple(layer.weight.shape)} in the "
                        f"trained model, {tuple(initial.weight.shape)} in init_model"
                    )
            return init

        return self.cached("init_layers", compute)

    @property
    def num_layers(self) -> int:
        """d, the number of weight layers of the folded network."""
        return len(self.layers)

    @property
    def weight_matrices(self) -> list[WeightLayer] | list[WeightMatrix]:
        """The network's weight matrices: :attr:`layers` if it folds, else those of any network.

        The one view of the weight-matrix measures (:mod:`genmeasures.measures.matrices`, which
        says which tensors count and why).
        """
        return matrices.weight_matrices(self)

    @property
    def init_weight_matrices(self) -> list[WeightLayer] | list[WeightMatrix]:
        """The initial network's counterparts of :attr:`weight_matrices`, in the same order."""
        return matrices.initial_matrices(self)

    def frobenius_norms(self) -> np.ndarray:
        """‖W_i‖_F of every weight matrix (:attr:`weight_matrices`), float64 (§1.4)."""
        return self.cached(
            "fro",
            lambda: np.array(
                [float(layer.matrix.double().norm()) for layer in self.weight_matrices]
            ),
        )

    def distance_frobenius_norms(self) -> np.ndarray:
        """‖W_i − W_i^0‖_F of every weight matrix (:attr:`weight_matrices`), float64."""
        return self.cached(
            "fro-dist",
            lambda: np.array(
                [
                    float((layer.matrix.double() - init.matrix.double()).norm())
                    for layer, init in zip(
                        self.weight_matrices, self.init_weight_matrices, strict=True
                    )
                ]
            ),
        )


def _frozen_copy(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """An eval-mode copy on ``device`` in ``dtype``, whose parameters need no gradient.

    Measures that differentiate do so explicitly (w.r.t. inputs, or with ``torch.func`` on
    detached parameters), so plain reads of weights never build autograd graphs.
    """
    frozen = copy.deepcopy(model).to(device)
    if dtype is not None:
        frozen = frozen.to(dtype)  # floating parameters and buffers only
    return frozen.eval().requires_grad_(False)


def _checked_layers(
    model: nn.Module, input_shape: tuple[int, ...] | None, which: str
) -> list[WeightLayer]:
    layers = weight_layers(model, input_shape)
    if not layers:
        raise ModelError(f"{which} has no weight layer (nn.Linear or nn.ConvNd)")
    for layer in layers:
        for kind, tensor in (("weight", layer.weight), ("bias", layer.bias)):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise NumericalError(f"{which}: layer {layer.name!r} has a non-finite {kind}")
    return layers
