"""The space's checks of one value and of a list of values, and how they report a rejection.

Every rejection reads ``"<source>: <key> expected <X>, received <value!r>."``
(:func:`genmeasures.validation.rejection`), where ``source`` is the preset name, the file path or
``config`` and ``key`` the setting as the user wrote it (``grid.width[1]``), optionally followed by
a hint such as ``Did you mean 'width'?``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from genmeasures.errors import SpaceError
from genmeasures.validation import Declared, Rejected, rejection

__all__ = ["close", "fail", "freeze", "jsonable", "parse", "parse_list", "show"]


def jsonable(value: Any) -> Any:
    """Tuples to lists, recursively (every value of a space is a JSON scalar, list or dict)."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def freeze(value: Any) -> Any:
    """Lists to tuples, recursively (JSON lists read back as the tuples they were)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def show(value: Any) -> str:
    """A value as it would be written in TOML/JSON (lists instead of tuples)."""
    return json.dumps(jsonable(value), ensure_ascii=False, default=repr)


def fail(source: str, key: str, value: Any, expected: str, hint: str = "") -> NoReturn:
    """Raise :class:`SpaceError` with :func:`~genmeasures.validation.rejection`'s message."""
    raise SpaceError(rejection(source, key, expected, value) + hint)


def close(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the close matches of ``name``, or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(map(repr, matches))}?" if matches else ""


def parse(source: str, key: str, value: Any, setting: Declared) -> Any:
    """The canonical form of ``value`` by the setting's constraint, or a :class:`SpaceError`."""
    try:
        return setting.constraint.parse(value)
    except Rejected:
        fail(source, key, value, setting.constraint.expected)


def parse_list(source: str, key: str, values: Any, setting: Declared) -> tuple[Any, ...]:
    """A list of values of one setting (a grid list): non-empty, each parsed, no duplicates."""
    expected = f"a non-empty list of values, each {setting.constraint.expected}"
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        fail(source, key, values, expected)
    if not values:
        fail(source, key, values, expected)
    parsed = tuple(parse(source, f"{key}[{i}]", v, setting) for i, v in enumerate(values))
    for i, value in enumerate(parsed):
        if value in parsed[:i]:
            fail(
                source,
                key,
                values,
                "a list without duplicate values",
                f" {show(value)} appears more than once.",
            )
    return parsed
