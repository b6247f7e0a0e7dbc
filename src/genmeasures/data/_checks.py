"""Argument checks shared by the data loaders, the transforms and :func:`load_dataset`.

Each check raises :class:`~genmeasures.errors.DataError` with a message that names the parameter,
says what was expected and shows what was received.
"""

from __future__ import annotations

import math
import numbers

from genmeasures.errors import DataError


def check_fraction(parameter: str, value: object) -> float:
    """Return ``value`` as a float after checking that it is a real number in ``[0, 1]``.

    Args:
        parameter: Name of the parameter, used in the error message.
        value: The value received.

    Returns:
        The fraction as a Python float.

    Raises:
        DataError: If ``value`` is not a finite real number in ``[0, 1]``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not 0.0 <= float(value) <= 1.0
    ):
        raise DataError(f"{parameter}: expected a fraction in [0, 1], received {value!r}.")
    return float(value)


def check_int(parameter: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int after checking that it is an integer in a range.

    Args:
        parameter: Name of the parameter, used in the error message.
        value: The value received.
        minimum: Smallest accepted value.
        maximum: Largest accepted value, or ``None`` for no upper bound.

    Returns:
        The value as a Python int.

    Raises:
        DataError: If ``value`` is not an integer (booleans are refused) or lies outside
            ``[minimum, maximum]``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DataError(f"{parameter}: expected an integer {bounds}, received {value!r}.")
    return int(value)


def check_optional_size(parameter: str, value: object) -> int | None:
    """Return ``value`` unchanged if it is ``None``, else check that it is a positive integer.

    Args:
        parameter: Name of the parameter, used in the error message.
        value: The value received.

    Returns:
        ``None`` or the size as a Python int.

    Raises:
        DataError: If ``value`` is neither ``None`` nor a positive integer.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DataError(f"{parameter}: expected None or a positive integer, received {value!r}.")
    return int(value)
