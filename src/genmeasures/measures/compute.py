"""``genmeasures.compute``: the public entry point of the measures part."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from genmeasures.data import Dataset
from genmeasures.errors import (
    GenMeasuresError,
    GenMeasuresWarning,
    MeasureError,
    MissingInputError,
    UnsupportedInputError,
    UnsupportedLayerError,
)
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.inputs import (
    OutputFn,
    check_input_shape,
    check_labels,
    computation_dtype,
    resolve_device,
)
from genmeasures.measures.registry import MeasureSpec, get_measure, resolve_measures
from genmeasures.measures.result import MeasureResult, Results, UndefinedMeasure
from genmeasures.validation import Integer, Settings, check

DEFAULT_BATCH_SIZE = 512

#: Called after each measure with (measure name, index, total); e.g. to advance a progress bar.
ProgressCallback = Callable[[str, int, int], None]

#: The training set: a Dataset, or (inputs, labels) as tensors, numpy arrays or lists of samples.
TrainingData = Dataset | tuple[Any, Any] | None


def compute(
    model: nn.Module,
    data: TrainingData,
    *,
    measures: str | Iterable[str] = "all",
    init_model: nn.Module | None = None,
    records: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
    output_fn: OutputFn | None = None,
) -> Results:
    """Compute generalization measures of a trained network.

    The network is deep-copied, put in eval mode and BatchNorm-folded before any weight-based
    measure (Jiang et al. 2020, appendix C.1; ``MEASURES.md`` §1.2); the caller's model is never
    modified.

    Args:
        model: The trained network; its output is the logits.
        data: The training set the model was trained on, as a :class:`~genmeasures.data.Dataset`
            (its ``train`` split is used) or ``(inputs, labels)``, each a tensor, a numpy array
            or a list of samples (converted, then checked as tensors: integer labels,
            floating-point inputs computed in the model's dtype); None for measures that need
            only the architecture.
        measures: ``"all"``, a glob pattern (``"*spec*"``), a name or alias, or a list of them.
        init_model: The network before the first optimizer update, for the init-relative
            measures.
        records: Training-time records (``MEASURES.md`` §2.5).
        seed: Seed of every random stream (power iterations, draws).
        device: Where to compute; defaults to the model's device.
        batch_size: Examples per forward pass (default 512).
        options: Measure name → its options, e.g. ``{"pacbayes-flatness": {"s_max": 1}}``; each
            is checked and canonicalized before any measure runs (``2`` and ``2.0`` are one value),
            and a result's ``params`` holds the canonical values.
        progress: Optional callback called after each measure.
        output_fn: Selects the logits from the model's output when the output is not a tensor;
            by default a mapping or Hugging Face ``ModelOutput`` gives its ``logits`` and a tuple
            its first element (:func:`~genmeasures.measures.inputs.logits_selector`).

    Returns:
        Mapping name → :class:`MeasureResult`, with ``.values`` and ``.to_frame()``. A measure
        selected by a pattern whose inputs are missing is reported with ``status="missing"``
        (or ``"unsupported"`` when the architecture cannot be folded) and a NaN value; a measure
        undefined for this model (margin γ ≤ 0) has ``status="undefined"``, a NaN value and a
        warning.

    Raises:
        MeasureError: for bad arguments, unknown measure names or options, or data that do not
            fit the model (inputs of another shape than ``model.input_shape``, a number of
            classes other than the model's outputs, labels out of range), before any measure
            runs.
        ModelError: for a model whose forward pass fails on one example of the data.
        MissingInputError: if a measure named explicitly lacks an input it needs.
        UnsupportedLayerError: if a measure named explicitly needs folding that is impossible.
    """
    if not isinstance(model, nn.Module):
        raise MeasureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if init_model is not None and not isinstance(init_model, nn.Module):
        raise MeasureError(
            f"init_model must be a torch.nn.Module or None, got {type(init_model).__name__}"
        )
    seed = check(seed, Integer(), where="compute", parameter="seed", error=MeasureError)
    batch_size = check(
        DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
        Integer(1),
        where="compute",
        parameter="batch_size",
        error=MeasureError,
    )
    inputs, labels = _training_set(data)
    source = f"dataset {data.name!r}" if isinstance(data, Dataset) else "data"
    if inputs is not None:
        check_input_shape(model, inputs, source)
    selected = resolve_measures(measures)
    specs = [spec for spec, _ in selected]
    options_by_name = _canonical_options(specs, options or {})
    device = resolve_device(device, model)
    dtype = computation_dtype(model)
    if inputs is not None and inputs.is_floating_point():
        inputs = inputs.to(dtype)  # the model's dtype, whatever the data's
    input_shape = (
        tuple(inputs.shape[1:]) if inputs is not None else getattr(model, "input_shape", None)
    )
    ctx = MeasureContext(
        model,
        inputs,
        labels,
        init_model=init_model,
        records=None if records is None else dict(records),
        seed=seed,
        device=device,
        batch_size=batch_size,
        input_shape=None if input_shape is None else tuple(input_shape),
        dtype=dtype,
        output_fn=output_fn,
    )
    if inputs is not None and labels is not None:
        check_labels(
            ctx.model,
            ctx.inputs,
            ctx.labels,
            source,
            data.num_classes if isinstance(data, Dataset) else None,
        )
    results = []
    for index, (spec, explicit) in enumerate(selected):
        results.append(_run_one(spec, ctx, options_by_name[spec.name], explicit=explicit))
        if progress is not None:
            progress(spec.name, index + 1, len(specs))
    _warn_missing(results)
    return Results(results)


def _warn_missing(results: list[MeasureResult]) -> None:
    """One warning for the measures that came back ``missing``, by the input they need."""
    missing: dict[str, list[str]] = {}
    for result in results:
        if result.status == "missing":
            missing.setdefault(result.message or "an input is missing", []).append(result.name)
    if missing:
        count = sum(len(names) for names in missing.values())
        reasons = "; ".join(
            f"{len(names)} because {message} ({', '.join(names)})"
            for message, names in missing.items()
        )
        warnings.warn(
            f"{count} of {len(results)} measures are missing: {reasons}",
            GenMeasuresWarning,
            stacklevel=3,
        )


def _training_set(data: TrainingData) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if data is None:
        return None, None
    if isinstance(data, Dataset):
        data = data.train
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise MeasureError(
            "data must be a Dataset, a pair (inputs, labels) of tensors, numpy arrays or lists "
            "of samples, or None; "
            f"got {type(data).__name__}"
        )
    inputs, labels = _as_tensor(data[0], "inputs"), _as_tensor(data[1], "labels")
    if inputs.ndim < 2 or labels.ndim != 1 or len(inputs) != len(labels):
        raise MeasureError(
            f"data must be inputs of shape (m, ...) and labels of shape (m,); got inputs "
            f"{tuple(inputs.shape)} and labels {tuple(labels.shape)}"
        )
    if len(labels) < 2:
        raise MeasureError(
            f"data holds {len(labels)} example(s): the measures need at least 2 (a margin "
            "quantile, an accuracy drop or a gradient variance over one example is not defined)"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.min() < 0:
        raise MeasureError(
            f"labels must be non-negative integer class indices, got dtype {labels.dtype} "
            f"and minimum {labels.min().item()}"
        )
    return inputs, labels.long()


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor, or a numpy array or a list of samples (numbers, arrays, tensors) as a tensor.

    Validated afterwards like a tensor: labels must then be integers (int64 once checked),
    floating-point inputs are computed in the model's dtype.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple):
        samples = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in value]
        try:
            value = np.stack([np.asarray(sample) for sample in samples]) if samples else None
        except ValueError as error:  # samples of different shapes
            raise MeasureError(f"data's {what}: samples of different shapes ({error})") from None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        kind = f"a numpy array of {value.dtype}" if isinstance(value, np.ndarray) else None
        raise MeasureError(
            f"data's {what} must be a tensor, a numpy array of numbers or a non-empty list of "
            f"samples, got {kind or type(value).__name__}"
        )
    return torch.from_numpy(np.ascontiguousarray(value))


def _canonical_options(
    specs: list[MeasureSpec], options: Mapping[str, Mapping[str, Any]]
) -> dict[str, Settings | None]:
    by_name = {spec.name: spec for spec in specs}
    given: dict[str, Mapping[str, Any]] = {}
    for key, value in options.items():
        canonical = get_measure(key).name
        if canonical not in by_name:
            raise MeasureError(
                f"options given for measure {canonical!r}, which is not among the measures computed"
            )
        if not isinstance(value, Mapping):
            raise MeasureError(f"options[{key!r}] must be a mapping of parameters, got {value!r}")
        given[canonical] = value
    return {spec.name: spec.canonical_options(given.get(spec.name, {})) for spec in specs}


def _run_one(
    spec: MeasureSpec, ctx: MeasureContext, options: Settings | None, *, explicit: bool
) -> MeasureResult:
    recorded = spec.recorded_params(options, ctx.seed)
    start = time.perf_counter()

    def without_value(status: str, message: str) -> MeasureResult:
        return MeasureResult(
            name=spec.name,
            value=math.nan,
            converged=status == "undefined",
            seconds=time.perf_counter() - start,
            params=recorded,
            status=status,
            message=message,
        )

    try:
        spec.check_domain(ctx)  # outside its domain a measure is unsupported, never a number
        output = spec.call(ctx, options)
    except (MissingInputError, UnsupportedLayerError, UnsupportedInputError) as error:
        if explicit:
            raise type(error)(f"measure {spec.name!r}: {error}") from error
        status = "missing" if isinstance(error, MissingInputError) else "unsupported"
        return without_value(status, str(error))
    except UndefinedMeasure as undefined:
        warnings.warn(f"{spec.name}: {undefined}", GenMeasuresWarning, stacklevel=3)
        return without_value("undefined", str(undefined))
    except GenMeasuresError as error:
        raise type(error)(f"measure {spec.name!r}: {error}") from error
    if not output.converged:
        warnings.warn(
            f"{spec.name}: an iterative step did not converge; the value is reported with "
            "converged=False",
            GenMeasuresWarning,
            stacklevel=3,
        )
    return MeasureResult(
        name=spec.name,
        value=float(output.value),
        converged=output.converged,
        seconds=time.perf_counter() - start,
        params=recorded,
        log_value=output.log_value,
        per_layer=output.per_layer,
        extra=output.extra,
    )
