"""What a measure returns, and the collection :func:`genmeasures.compute` returns."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from genmeasures.errors import GenMeasuresWarning


@dataclass(frozen=True)
class MeasureOutput:
    """The value a measure function computes, before ``compute`` adds timing and parameters.

    Attributes:
        value: The measure μ, oriented as a complexity (``MEASURES.md`` §1.5). NaN when the
            measure is undefined (e.g. margin γ ≤ 0).
        converged: False when an iterative step (power iteration, search) did not converge.
        log_value: ``log μ`` for products and powers of norms, finite even when ``value``
            overflows.
        per_layer: Optional table with one row per weight layer.
        extra: Further diagnostics (derived bound, γ, notes).
    """

    value: float
    converged: bool = True
    log_value: float | None = None
    per_layer: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeasureResult:
    """One measure's result for one model.

    Attributes:
        name: Canonical measure name.
        value: The measure's value (NaN if missing or undefined).
        converged: Whether every iterative step converged.
        seconds: Wall time spent in this measure, excluding shared intermediates computed
            earlier by another measure.
        params: The parameters it was computed with (options, seed, spectral variant).
        status: ``"ok"``, or ``"missing"`` when an input it needs was not given.
        message: Why it is missing or undefined, if it is.
        log_value: ``log μ`` where the catalog defines one.
        per_layer: Optional per-layer table.
        extra: Further diagnostics.
    """

    name: str
    value: float
    converged: bool
    seconds: float
    params: dict[str, Any]
    status: str = "ok"
    message: str | None = None
    log_value: float | None = None
    per_layer: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Results(Mapping[str, MeasureResult]):
    """Mapping measure name → :class:`MeasureResult`, in the order they were computed."""

    def __init__(self, results: list[MeasureResult]) -> None:
        self._results = {r.name: r for r in results}

    def __getitem__(self, name: str) -> MeasureResult:
        return self._results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return f"Results({len(self)} measures)\n{self.to_frame().to_string()}"

    @property
    def values(self) -> dict[str, float]:  # type: ignore[override]
        """Measure name → value as a plain float (NaN when missing or undefined)."""
        return {name: float(r.value) for name, r in self._results.items()}

    def to_frame(self) -> pd.DataFrame:
        """One row per measure: value, log_value, converged, seconds, status, message, params."""
        rows = [
            {
                "measure": r.name,
                "value": r.value,
                "log_value": math.nan if r.log_value is None else r.log_value,
                "converged": r.converged,
                "seconds": r.seconds,
                "status": r.status,
                "message": r.message or "",
                "params": r.params,
            }
            for r in self._results.values()
        ]
        columns = [
            "measure",
            "value",
            "log_value",
            "converged",
            "seconds",
            "status",
            "message",
            "params",
        ]
        return pd.DataFrame(rows, columns=columns).set_index("measure")


def from_log(log_value: float, **fields: Any) -> MeasureOutput:
    """An output whose value is ``exp(log_value)``, computed in log space (``MEASURES.md`` §1.5).

    A value that overflows float64 becomes ``+inf`` with a warning; ``log_value`` stays finite.
    """
    try:
        value = math.exp(log_value)
    except OverflowError:
        warnings.warn(
            f"value exp({log_value:.4g}) overflows float64 and is reported as +inf; "
            "its log_value is finite and ranks the same",
            GenMeasuresWarning,
            stacklevel=2,
        )
        value = math.inf
    return MeasureOutput(value=value, log_value=log_value, **fields)


class UndefinedMeasure(Exception):
    """Raised inside a measure whose value is undefined for this model (e.g. margin γ ≤ 0).

    :func:`genmeasures.compute` turns it into a NaN result with a warning carrying the message.
    """
