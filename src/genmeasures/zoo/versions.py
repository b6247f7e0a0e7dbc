"""Measure implementation versions of a study's stored values, and which values are stale.

Each measure carries an implementation version (:attr:`MeasureSpec.version
<genmeasures.measures.registry.MeasureSpec.version>`), bumped when its numbers change for the
same model, data, options and seed. A study stores it with every value (``measure_version``,
schema version 3). A stored value is **stale** when its measure is registered and the version
stored with it is not the measure's current one; a value stored before measures had versions
(NULL: unknown) is stale too. A value of a measure no longer registered has no current version
and is never stale: nothing could recompute it.

:func:`~genmeasures.zoo.measuring.measure_zoo` recomputes the stale values it is asked for,
replacing them; :func:`stale_measures` and :func:`stale_warning` tell ``show`` and ``evaluate``
when the values of a ``done`` model (those that are scored) mix versions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from genmeasures.measures.registry import list_measures
from genmeasures.zoo.states import ModelState

if TYPE_CHECKING:
    from genmeasures.zoo.store import Zoo

__all__ = ["StaleMeasure", "current_versions", "is_stale", "stale_measures", "stale_warning"]


def current_versions() -> dict[str, int]:
    """Each registered measure's name → its current implementation version."""
    return {spec.name: spec.version for spec in list_measures()}


def is_stale(stored: int | None, current: int | None) -> bool:
    """Whether a value stored by measure version ``stored`` must be recomputed.

    Args:
        stored: The version stored with the value; None for one stored before measures had
            versions.
        current: The measure's current version; None for a measure no longer registered.
    """
    return current is not None and stored != current


@dataclass(frozen=True)
class StaleMeasure:
    """A measure some of whose stored values are stale.

    Attributes:
        name: The measure.
        stale: How many of its values are stale.
        values: How many values of it are stored.
        stored: The versions its stale values were stored by (``"unknown"`` for NULL).
        current: Its current version.
    """

    name: str
    stale: int
    values: int
    stored: tuple[str, ...]
    current: int

    def describe(self) -> str:
        """``name (stale of values: version ..., current N)``, for messages."""
        versions = ", ".join(self.stored)
        label = "version" if len(self.stored) == 1 else "versions"
        return (
            f"{self.name} ({self.stale} of {self.values} values: {label} {versions}, "
            f"current {self.current})"
        )


def stale_measures(zoo: Zoo, measures: Iterable[str] | None = None) -> list[StaleMeasure]:
    """The measures whose stored values of ``done`` models are not all of the current version.

    Args:
        zoo: The study.
        measures: The measures to check (canonical names); None: every stored one.

    Returns:
        One entry per measure with a stale value, in the order of :meth:`Zoo.measures_table`.
    """
    long = zoo.measures_table()
    done = {config.hash for config in zoo.configs((ModelState.DONE,))}
    long = long[long["model"].isin(done)]
    if measures is not None:
        long = long[long["name"].isin(list(measures))]
    versions = current_versions()
    found = []
    for name, values in long.groupby("name", sort=False):
        stale = values[values["stale"]]
        if not stale.empty:
            stored = sorted({_label(version) for version in stale["measure_version"]})
            found.append(
                StaleMeasure(str(name), len(stale), len(values), tuple(stored), versions[name])
            )
    return found


def stale_warning(zoo: Zoo, measures: Iterable[str] | None = None) -> str | None:
    """One line saying which measures mix versions and how to recompute them, or None.

    Args:
        zoo: The study.
        measures: The measures to check (canonical names); None: every stored one.
    """
    stale = stale_measures(zoo, measures)
    if not stale:
        return None
    names = " ".join(entry.name for entry in stale)
    return (
        f"study {zoo.path} holds stale values, computed by another version of their measure "
        f"than this genmeasures': {'; '.join(entry.describe() for entry in stale)}. Scores mixing "
        f"them compare different implementations: recompute them with "
        f"`genmeasures measure {zoo.path} --measures {names}`"
    )


def _label(version: object) -> str:
    return "unknown" if pd.isna(version) else str(int(version))
