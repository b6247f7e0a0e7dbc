"""Optimization-based measures (Jiang et al. 2020, eqs 63-66; ``MEASURES.md`` §3.8).

Two measures count optimizer updates to cross-entropy thresholds, read from the training-time
loss checks (record R1 of ``MEASURES.md`` §2.5). Two measure the gradient noise: the population
variance of the per-example gradients of the data cross-entropy, after the first epoch (record
R2) and at the final weights.

The gradients are taken in the optimizer's own parametrization: every parameter of the
**unfolded** network as trained (BN affine parameters included), in eval mode (BN running
statistics, no dropout), without weight decay. The measures receive the records through
``ctx.records``; they never read files or import the zoo.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from genmeasures.errors import MeasureError, MissingInputError, ModelError, NumericalError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.functional import FunctionalNetwork
from genmeasures.measures.registry import register_measure
from genmeasures.measures.result import MeasureOutput, UndefinedMeasure
from genmeasures.validation import Integer, Maybe, Settings, setting

#: Family name of these measures in the catalog's summary table (``MEASURES.md`` §6).
FAMILY = "optimization"

#: The two cross-entropy thresholds of eqs 63 and 64.
FIRST_THRESHOLD, SECOND_THRESHOLD = 0.1, 0.01

#: Purpose of the random stream that draws the ``grad_noise_samples`` subset. Eqs 65 and 66 use
#: the same purpose, so that with equal seeds they see the same examples (``MEASURES.md`` §3.8).
SUBSET_PURPOSE = "grad-noise/subset"

#: Upper bound on the memory of one chunk of per-example gradients, in bytes (counted in float64).
CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class GradientNoiseOptions(Settings):
    """Options of the two gradient-noise measures (eqs 65-66)."""

    WHERE = "gradient-noise options"
    ERROR = MeasureError

    grad_noise_samples: int | None = setting(
        None,
        Maybe(Integer(1)),
        "examples drawn once without replacement with the measure's seed (the same for both "
        "measures); None uses the whole training set",
    )


# ---------------------------------------------------------------------------------- records


def _require_record(ctx: MeasureContext, key: str) -> Any:
    """Return ``ctx.records[key]``, or raise :class:`MissingInputError`."""
    if ctx.records is None:
        raise MissingInputError(
            "this measure needs the training records (MEASURES.md §2.5): pass records=, e.g. "
            "the records of genmeasures.zoo.train.train_to_target"
        )
    if key not in ctx.records:
        raise MissingInputError(
            f"the training records lack {key!r} (MEASURES.md §2.5); they hold "
            f"{sorted(ctx.records) or 'nothing'}"
        )
    return ctx.records[key]


def _validated_checks(ce_checks: object) -> list[tuple[int, float]]:
    """The loss checks as ``(t, ĉ_t)`` pairs; pairs read back from JSON as lists are accepted.

    Raises:
        MeasureError: naming the first malformed entry.
    """
    if isinstance(ce_checks, str | bytes) or not isinstance(ce_checks, Iterable):
        raise MeasureError(
            f"records' ce_checks must be a list of (t, cross-entropy) pairs, got "
            f"{type(ce_checks).__name__}"
        )
    checks = []
    for index, entry in enumerate(ce_checks):
        valid = (
            isinstance(entry, tuple | list)
            and len(entry) == 2
            and isinstance(entry[0], numbers.Integral)
            and not isinstance(entry[0], bool)
            and entry[0] >= 0
            and isinstance(entry[1], numbers.Real)
            and not isinstance(entry[1], bool)
        )
        if not valid:
            raise MeasureError(
                f"records' ce_checks[{index}] must be a pair (t, cross-entropy) with t an int "
                f"≥ 0 and a real cross-entropy, got {entry!r}"
            )
        checks.append((int(entry[0]), float(entry[1])))
    return checks


def first_step_at_or_below(ce_checks: Iterable[tuple[int, float]], threshold: float) -> int | None:
    """The smallest step ``t`` whose loss check ``ĉ_t`` is at or below ``threshold``.

    This is ``t_{0.1}`` and ``t_{0.01}`` of ``MEASURES.md`` §2.5 (Jiang et al. 2020, eqs 63-64).
    The smallest ``t`` is taken, whatever the order of the list; a non-finite ``ĉ_t`` (a diverged
    check) never counts as reached.

    Args:
        ce_checks: Record R1: pairs ``(t, ĉ_t)`` of optimizer updates completed and estimated
            training cross-entropy (lists of two, as read back from JSON, are accepted).
        threshold: The cross-entropy to reach, e.g. 0.1.

    Returns:
        The step ``t``, or None if no check reached the threshold (or there is no check).

    Raises:
        MeasureError: for a malformed entry of ``ce_checks``.
    """
    reached = [t for t, ce in _validated_checks(ce_checks) if math.isfinite(ce) and ce <= threshold]
    return min(reached, default=None)


def _threshold_step(ctx: MeasureContext, threshold: float) -> int:
    """``t`` of the first check at or below ``threshold``; UndefinedMeasure if never reached."""
    checks = _validated_checks(_require_record(ctx, "ce_checks"))
    step = first_step_at_or_below(checks, threshold)
    if step is None:
        finite = [(ce, t) for t, ce in checks if math.isfinite(ce)]
        lowest = (
            f"the lowest check is {min(finite)[0]:.4g} at t = {min(finite)[1]}"
            if finite
            else "no check is finite"
        )
        raise UndefinedMeasure(
            f"the training cross-entropy never reached {threshold} in the {len(checks)} loss "
            f"checks of the records ({lowest})"
        )
    return step


@register_measure(
    "num-step-to-0.1-loss",
    eq=63,
    family=FAMILY,
    needs=("records",),
    aliases=("step to 0.1", "step-to-0.1", "#steps-0.1-loss"),
    domain="differentiable",
)
def num_step_to_first_threshold(ctx: MeasureContext) -> MeasureOutput:
    """t_{0.1}: optimizer updates until the first loss check with cross-entropy ≤ 0.1 (eq 63).

    Jiang et al. (2020), eq 63; ``MEASURES.md`` §3.8. Steps, not epochs, are counted; the
    resolution is the interval between loss checks. NaN (status ``"undefined"``) if the
    threshold was never reached.
    """
    step = _threshold_step(ctx, FIRST_THRESHOLD)
    return MeasureOutput(value=float(step), extra={"t_0.1": step})


@register_measure(
    "num-step-0.1-to-0.01-loss",
    eq=64,
    family=FAMILY,
    needs=("records",),
    aliases=("step 0.1 to 0.01", "step-0.1-to-0.01", "step between"),
    domain="differentiable",
)
def num_step_between_thresholds(ctx: MeasureContext) -> MeasureOutput:
    """t_{0.01} − t_{0.1}: optimizer updates from cross-entropy 0.1 to 0.01 (eq 64).

    Jiang et al. (2020), eq 64; ``MEASURES.md`` §3.8. It is 0 when the same loss check crosses
    both thresholds, and NaN (status ``"undefined"``) if either was never reached.
    """
    first = _threshold_step(ctx, FIRST_THRESHOLD)
    second = _threshold_step(ctx, SECOND_THRESHOLD)
    return MeasureOutput(value=float(second - first), extra={"t_0.1": first, "t_0.01": second})


# ---------------------------------------------------------------------------- gradient noise


def _chunk_size(num_parameters: int, batch_size: int) -> int:
    """Examples per chunk of pass 2, so that their float64 gradients fit in :data:`CHUNK_BYTES`."""
    return max(1, min(batch_size, CHUNK_BYTES // (8 * max(1, num_parameters))))


def _examples(ctx: MeasureContext, samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set, or ``samples`` examples of it drawn once without replacement."""
    inputs, labels = ctx.require_data()
    m = len(labels)
    if samples is None:
        return inputs, labels
    if samples > m:
        raise MeasureError(
            f"option grad_noise_samples = {samples} exceeds the {m} training examples; pass "
            f"None (the full training set) or at most {m}"
        )
    order = torch.randperm(m, generator=ctx.generator(SUBSET_PURPOSE), device=ctx.device)
    index = order[: int(samples)]
    return inputs[index], labels[index]


def _squared_deviations(
    gradients: dict[str, torch.Tensor], mean: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Σ_j ‖g_j − ḡ‖² over one chunk of per-example gradients (leading dim j), in float64."""
    total = torch.zeros((), dtype=torch.float64, device=next(iter(mean.values())).device)
    for name, g in gradients.items():
        deviation = g.to(torch.float64).sub_(mean[name])  # one float64 copy, updated in place
        total += deviation.square_().sum()
    return total


def _dense_layers(model: nn.Module) -> dict[nn.Linear, tuple[str, str | None]] | None:
    """Every ``nn.Linear`` of ``model`` with its weight's and bias's names, or None.

    None unless these layers hold all of the model's parameters, each once, and none has hooks
    or parametrizations (which could change what the layer computes).
    """
    names = {id(p): name for name, p in model.named_parameters()}
    layers: dict[nn.Linear, tuple[str, str | None]] = {}
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or hasattr(module, "parametrizations")
        ):
            return None
        bias = None if module.bias is None else names.get(id(module.bias))
        layers[module] = (names.get(id(module.weight)), bias)
    held = [name for weight, bias in layers.values() for name in (weight, bias) if name]
    complete = sorted(held) == sorted(names.values()) and len(set(held)) == len(held)
    return layers if layers and complete else None


def _dense_squared_deviations(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    mean: dict[str, torch.Tensor],
    *,
    batch_size: int,
) -> torch.Tensor | None:
    """``Σ_j ‖g_j − ḡ‖²`` of a network whose parameters are all in dense layers, or None.

    A dense layer ``z = W a + b`` applied once to example ``j`` has the per-example gradients
    ``δ_j a_jᵀ`` and ``δ_j``, with ``δ_j = ∂ℓ_j/∂z_j`` (in eval mode the examples of a batch do
    not interact, so one backward pass of the summed loss gives every ``δ_j``). Hence, exactly,
    ``‖δ_j a_jᵀ − W̄‖² = ‖δ_j‖²‖a_j‖² − 2 δ_jᵀ W̄ a_j + ‖W̄‖²`` and ``‖δ_j − b̄‖²``, summed in
    float64 from one forward and one backward pass per batch: no per-example gradient is formed.
    None when a parameter is not in a dense layer, a layer runs more than once per pass or on
    inputs that are not one vector per example; the caller then forms per-example gradients.
    """
    layers = _dense_layers(model)
    if layers is None:
        return None
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def keep(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.append((module, args[0], out))

    for start in range(0, len(labels), batch_size):
        seen.clear()
        handles = [layer.register_forward_hook(keep) for layer in layers]
        try:
            with torch.enable_grad():
                # The input carries the graph: the parameters of a measure's copy are frozen.
                batch = inputs[start : start + batch_size].detach().requires_grad_()
                logits = model(batch)
                loss = F.cross_entropy(logits, labels[start : start + batch_size], reduction="sum")
            once = len({id(module) for module, _, _ in seen}) == len(seen) == len(layers)
            if not once or any(a.dim() != 2 for _, a, _ in seen):
                return None
            deltas = torch.autograd.grad(loss, [out for _, _, out in seen])
        finally:
            for handle in handles:
                handle.remove()
        for (module, a, _), delta in zip(seen, deltas, strict=True):
            weight_name, bias_name = layers[module]
            a64, d64, w = a.detach().double(), delta.double(), mean[weight_name]
            total += (d64.square().sum(1) * a64.square().sum(1)).sum()
            total += len(a64) * w.square().sum() - 2 * ((d64 @ w) * a64).sum()
            if bias_name is not None:
                total += (d64 - mean[bias_name]).square().sum()
    return total


def _gradient_variance(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int
) -> float:
    """Population variance of per-example gradients, ``Σ_j ‖g_j − ḡ‖² / n`` (eqs 65-66).

    ``g_j`` is the gradient of the cross-entropy of example j with respect to every parameter of
    ``model``, taken in the model's current mode (the caller puts it in eval mode). Two passes
    (``MEASURES.md`` §3.8): pass 1 sums the batch gradients into ḡ in float64; pass 2
    accumulates ``‖g_j − ḡ‖²`` in float64, in closed form from one backward pass per batch when
    every parameter is in a dense layer (:func:`_dense_squared_deviations`), else from the
    per-example gradients, computed in chunks with ``torch.func.vmap(torch.func.grad(...))``. A
    chunk of per-example gradients takes at most :data:`CHUNK_BYTES` (counted in float64).

    Args:
        model: The network; its output is the logits. Its parameters are not modified.
        inputs: Examples ``(n, *input_shape)`` on the model's device.
        labels: Integer labels ``(n,)``.
        batch_size: Examples per forward pass in pass 1, and at most per chunk in pass 2.

    Returns:
        The variance, the trace of the gradient covariance.

    Raises:
        ModelError: if the model has no parameters.
        NumericalError: if a gradient is not finite (names the parameter).
    """
    network = FunctionalNetwork(model)
    params = network.selected
    if not params:
        raise ModelError("the model has no parameters to take gradients of")
    n = len(labels)

    def summed_loss(
        parameters: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        logits = network(parameters, x)
        return F.cross_entropy(logits, y, reduction="sum")

    def example_loss(
        parameters: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return summed_loss(parameters, x.unsqueeze(0), y.unsqueeze(0))

    # Pass 1: ḡ = (1/n) Σ_j g_j, as a float64 sum of batch gradients.
    batch_gradient = grad(summed_loss)
    total = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for start in range(0, n, batch_size):
        gradients = batch_gradient(
            params, inputs[start : start + batch_size], labels[start : start + batch_size]
        )
        for name, g in gradients.items():
            total[name] += g.double()
    mean = {name: t / n for name, t in total.items()}
    for name, g in mean.items():
        if not torch.isfinite(g).all():
            raise NumericalError(f"the mean gradient of parameter {name!r} is not finite")

    # Pass 2: Σ_j ‖g_j − ḡ‖², without per-example gradients where every parameter is dense.
    squared = _dense_squared_deviations(model, inputs, labels, mean, batch_size=batch_size)
    if squared is None:
        per_example_gradients = vmap(grad(example_loss), in_dims=(None, 0, 0))
        chunk = _chunk_size(sum(p.numel() for p in params.values()), batch_size)
        squared = sum(
            _squared_deviations(
                per_example_gradients(
                    params, inputs[start : start + chunk], labels[start : start + chunk]
                ),
                mean,
            )
            for start in range(0, n, chunk)
        )
    value = float(squared) / n
    if not math.isfinite(value):
        raise NumericalError("the per-example gradients are not finite")
    return value


def _epoch1_model(ctx: MeasureContext) -> nn.Module:
    """A copy of the model with the records' epoch-1 state (parameters and buffers), eval mode."""
    state = _require_record(ctx, "epoch1_state")
    if state is None:
        steps = (ctx.records or {}).get("steps_per_epoch")
        when = f" (steps_per_epoch = {steps})" if steps is not None else ""
        raise UndefinedMeasure(
            "the training records hold no epoch-1 state (epoch1_state is None): training "
            f"stopped before the first epoch ended{when}"
        )
    if not isinstance(state, Mapping):
        raise MeasureError(
            f"records' epoch1_state must be a state dict or None, got {type(state).__name__}"
        )
    model = copy.deepcopy(ctx.model)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as error:
        raise ModelError(
            f"records' epoch1_state does not fit the model {type(ctx.model).__name__}: {error}"
        ) from error
    return model.eval()


@register_measure(
    "grad-noise-epoch-1",
    eq=65,
    family=FAMILY,
    needs=("data", "records"),
    stochastic="opt",
    aliases=("grad noise 1 epoch", "grad Var 1 epoch", "grad-noise-epoch1"),
    options=GradientNoiseOptions,
    domain="differentiable",
    version=2,  # 2: the dense closed form (float32 values move in the ninth digit)
)
def grad_noise_epoch_1(ctx: MeasureContext, *, options: GradientNoiseOptions) -> MeasureOutput:
    """Variance of per-example gradients after the first epoch (eq 65).

    Jiang et al. (2020), eq 65; ``MEASURES.md`` §3.8: ``Σ_j ‖g_j − ḡ‖² / n`` with ``g_j`` the
    gradient of example j's cross-entropy with respect to every parameter of the unfolded
    network, at the epoch-1 state of the records (parameters and buffers), in eval mode.

    Args:
        ctx: The model's measure context; needs the training set and the records.
        options: ``grad_noise_samples``: use this many training examples, drawn once without
            replacement with the measure's seed (the same ones as ``grad-noise-final``).

    Raises:
        UndefinedMeasure: if the records hold no epoch-1 state (training stopped earlier).
    """
    inputs, labels = _examples(ctx, options.grad_noise_samples)
    model = _epoch1_model(ctx)
    value = _gradient_variance(model, inputs, labels, batch_size=ctx.batch_size)
    return MeasureOutput(value=value, extra={"n": len(labels)})


@register_measure(
    "grad-noise-final",
    eq=66,
    family=FAMILY,
    needs=("data",),
    stochastic="opt",
    aliases=("grad noise final", "grad Var"),
    options=GradientNoiseOptions,
    domain="differentiable",
    version=2,  # 2: the dense closed form (float32 values move in the ninth digit)
)
def grad_noise_final(ctx: MeasureContext, *, options: GradientNoiseOptions) -> MeasureOutput:
    """Variance of per-example gradients at the final weights (eq 66).

    Jiang et al. (2020), eq 66; ``MEASURES.md`` §3.8: ``Σ_j ‖g_j − ḡ‖² / n`` with ``g_j`` the
    gradient of example j's cross-entropy with respect to every parameter of the unfolded
    trained network, in eval mode.

    Args:
        ctx: The model's measure context; needs the training set.
        options: ``grad_noise_samples``: use this many training examples, drawn once without
            replacement with the measure's seed (the same ones as ``grad-noise-epoch-1``).
    """
    inputs, labels = _examples(ctx, options.grad_noise_samples)
    value = _gradient_variance(ctx.model, inputs, labels, batch_size=ctx.batch_size)
    return MeasureOutput(value=value, extra={"n": len(labels)})
