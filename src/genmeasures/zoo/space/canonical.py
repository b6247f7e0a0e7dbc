"""Canonical orders of a space's hyperparameter types (Jiang et al. 2020, appendix C.4).

The canonical order of a type is the prediction "the gap grows with this hyperparameter":
``"increasing"``, ``"decreasing"``, ``"none"`` or a list of values from the smallest to the
largest expected gap. A space starts from the default orders of the types its model knows and
updates them with its ``[canonical]`` table; a direction is allowed only for a numeric type, and an
explicit list holds values of the type (checked by its constraint) covering every value of the
grid. :func:`rank` turns a value into the number whose order is the prediction.

The default orders (:data:`CANONICAL_ORDERS`) are declared here, with the hyperparameter types;
the evaluation receives them as an argument (``score_table(canonical=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genmeasures.evaluate.baselines import canonical_rank
from genmeasures.validation import Declared
from genmeasures.zoo.space.checks import close, fail, freeze, parse, parse_list, show
from genmeasures.zoo.space.settings import is_numeric

__all__ = ["CANONICAL_ORDERS", "DIRECTIONS", "Order", "default_orders", "rank", "read_canonical"]

#: Default canonical orders (Jiang et al. 2020, appendix C.4): ``"increasing"`` means the gap is
#: expected to grow with the value, ``"decreasing"`` the opposite, a tuple lists the values from
#: the smallest to the largest expected gap. Random labels and training-set size follow Zhang et
#: al. 2017 and the usual sample-size dependence of the gap.
CANONICAL_ORDERS: Mapping[str, str | tuple[Any, ...]] = {
    "batch_size": "increasing",
    "depth": "decreasing",
    "width": "decreasing",
    "dropout": "decreasing",
    "l2": "decreasing",
    "weight_decay": "decreasing",
    "lr": "decreasing",
    "optimizer": ("sgd", "adam", "rmsprop"),
    "random_labels": "increasing",
    "train_size": "decreasing",
}

#: The directions an order may name; a numeric type accepts all, another type only ``"none"``.
DIRECTIONS = ("increasing", "decreasing", "none")

#: A canonical order: a direction or the values from the smallest to the largest expected gap.
Order = str | tuple[Any, ...]


def default_orders(settings: Mapping[str, Declared]) -> dict[str, Order]:
    """The default canonical orders of the types among ``settings``."""
    return {key: order for key, order in CANONICAL_ORDERS.items() if key in settings}


def read_canonical(
    source: str,
    table: Mapping[str, Any],
    settings: Mapping[str, Declared],
    grid: Mapping[str, Any],
) -> dict[str, Order]:
    """The default orders of the known types, updated with a space's ``[canonical]`` table.

    Args:
        source: Named in error messages.
        table: The ``[canonical]`` table as given.
        settings: The space's settings (types).
        grid: The space's checked grid (per-optimizer keys as dicts of tuples).

    Raises:
        SpaceError: For an unknown type, a direction the type does not accept, or a list with
            an invalid or duplicate value or without every value of the grid.
    """
    canonical = default_orders(settings)
    for key, order in table.items():
        where = f"canonical.{key}"
        if key not in settings:
            fail(
                source,
                where,
                order,
                f"a hyperparameter type: one of {', '.join(settings)}",
                close(str(key), settings),
            )
        setting = settings[key]
        numeric = is_numeric(setting)
        if isinstance(order, str):
            allowed = DIRECTIONS if numeric else ("none",)
            if order not in allowed:
                lists = "" if numeric else f" (a list of values: {key} is not numeric)"
                fail(
                    source,
                    where,
                    order,
                    f"one of {', '.join(map(repr, allowed))} or a list of values from the "
                    f"smallest to the largest expected gap{lists}",
                )
            canonical[key] = order
            continue
        ranked = parse_list(source, where, order, setting)
        if key in grid:
            used = grid[key]
            used = (
                [v for vals in used.values() for v in vals]
                if isinstance(used, dict)
                else list(used)
            )
            for value in used:
                if value not in ranked:
                    fail(
                        source,
                        where,
                        order,
                        f"a list holding every value of grid.{key}",
                        f" {show(value)} is missing.",
                    )
        canonical[key] = ranked
    return canonical


def rank(
    source: str,
    settings: Mapping[str, Declared],
    canonical: Mapping[str, Order],
    type: str,
    value: Any,
) -> float | None:
    """The canonical rank of one value of a space's type; see :meth:`Space.canonical_rank`."""
    key = f"canonical_rank({type!r})"
    if type not in settings:
        fail(
            source,
            key,
            type,
            f"a setting of this space ({', '.join(settings)})",
            close(str(type), settings),
        )
    order = canonical.get(type, "none")
    if order == "none":
        return None
    parsed = parse(source, key, freeze(value), settings[type])
    if isinstance(order, tuple) and parsed not in order:
        fail(source, key, value, f"one of the canonical values {show(order)}")
    return canonical_rank(order, parsed)
