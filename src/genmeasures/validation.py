"""One validation idiom: constraints declared as data, one checker, one message grammar.

Every public entry point of genmeasures (datasets, model builders, training settings, spaces,
measure options) checks its parameters here, so that every rejection reads the same way::

    <where>: <parameter> expected <what it accepts>, received <the value>.

for example ``measure 'pacbayes-flatness': s_max expected a finite number > 0, received -1.``
``where`` names the measure, the setting group or the file; ``parameter`` the key as the user
wrote it (``grid.width`` in a space file).

A group of settings is a frozen dataclass deriving from :class:`Settings` whose fields are
declared with :func:`setting` (default, constraint, one line of documentation). Constructing it
checks and *canonicalizes* every field (an integer given for a real becomes a float, a list of
steps a tuple), so that two spellings of one value (``2`` and ``2.0``) are one value, with one
hash and one store key.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from genmeasures.errors import GenMeasuresError

__all__ = [
    "Constraint",
    "Custom",
    "Declared",
    "Flag",
    "IncreasingIntegers",
    "Integer",
    "Maybe",
    "OneOf",
    "Real",
    "Rejected",
    "Settings",
    "build",
    "check",
    "check_settings",
    "declared",
    "rejection",
    "setting",
    "settings_table",
]

SettingsT = TypeVar("SettingsT", bound="Settings")


class Rejected(Exception):
    """Raised by a constraint's ``parse`` for a value it does not accept."""


def rejection(where: str, parameter: str, expected: str, received: object) -> str:
    """The one message grammar of a rejected value.

    Args:
        where: The measure, settings group or file (``"measure 'spec-init'"``).
        parameter: The parameter as the user wrote it (``"s_max"``, ``"grid.width"``).
        expected: What is accepted, in words (a constraint's ``expected``).
        received: The value received.

    Returns:
        ``"<where>: <parameter> expected <expected>, received <received!r>."``
    """
    return f"{where}: {parameter} expected {expected}, received {received!r}."


class Constraint:
    """What a parameter accepts: ``expected`` in words and ``parse`` to its canonical value."""

    @property
    def expected(self) -> str:
        """What the constraint accepts, in words (completes "expected ...")."""
        raise NotImplementedError

    def parse(self, value: object) -> Any:
        """Return the canonical form of ``value``.

        Raises:
            Rejected: if the value is not accepted.
        """
        raise NotImplementedError


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer (``bool`` refused) in ``[minimum, maximum]``; either bound may be None."""

    minimum: int | None = None
    maximum: int | None = None

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        if self.minimum is not None and self.maximum is not None:
            return f"an integer in [{self.minimum}, {self.maximum}]"
        if self.minimum is not None:
            return f"an integer >= {self.minimum}"
        if self.maximum is not None:
            return f"an integer <= {self.maximum}"
        return "an integer"

    def parse(self, value: object) -> int:  # noqa: D102 - documented on Constraint
        if not _is_integer(value):
            raise Rejected
        number = int(value)  # type: ignore[call-overload]
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise Rejected
        return number


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number (``bool`` refused), canonicalized to a Python ``float``.

    Attributes:
        minimum: Lower bound; ``-inf`` for none.
        maximum: Upper bound; ``inf`` for none.
        open_minimum: The lower bound itself is excluded (``> minimum``).
        open_maximum: The upper bound itself is excluded (``< maximum``).
    """

    minimum: float = -math.inf
    maximum: float = math.inf
    open_minimum: bool = False
    open_maximum: bool = False

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        low, high = math.isfinite(self.minimum), math.isfinite(self.maximum)
        if low and high:
            left = "(" if self.open_minimum else "["
            right = ")" if self.open_maximum else "]"
            return f"a number in {left}{self.minimum:g}, {self.maximum:g}{right}"
        if low:
            return f"a finite number {'>' if self.open_minimum else '>='} {self.minimum:g}"
        if high:
            return f"a finite number {'<' if self.open_maximum else '<='} {self.maximum:g}"
        return "a finite number"

    def parse(self, value: object) -> float:  # noqa: D102 - documented on Constraint
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise Rejected
        number = float(value) + 0.0  # + 0.0 turns -0.0 into 0.0 (one spelling, one hash)
        if not math.isfinite(number):
            raise Rejected
        below = number <= self.minimum if self.open_minimum else number < self.minimum
        above = number >= self.maximum if self.open_maximum else number > self.maximum
        if below or above:
            raise Rejected
        return number


@dataclass(frozen=True)
class Flag(Constraint):
    """``True`` or ``False`` (integers refused)."""

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        return "true or false"

    def parse(self, value: object) -> bool:  # noqa: D102 - documented on Constraint
        if not isinstance(value, bool):
            raise Rejected
        return value


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        return f"one of {', '.join(map(repr, self.choices))}"

    def parse(self, value: object) -> str:  # noqa: D102 - documented on Constraint
        if not isinstance(value, str) or value not in self.choices:
            raise Rejected
        return value


@dataclass(frozen=True)
class Maybe(Constraint):
    """``None``, or a value that ``inner`` accepts."""

    inner: Constraint

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        return f"None or {self.inner.expected}"

    def parse(self, value: object) -> Any:  # noqa: D102 - documented on Constraint
        return None if value is None else self.inner.parse(value)


@dataclass(frozen=True)
class IncreasingIntegers(Constraint):
    """A list of strictly increasing integers >= ``minimum``, canonicalized to a tuple."""

    minimum: int = 1
    what: str = "integers"

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        return f"a list of strictly increasing {self.what} >= {self.minimum}"

    def parse(self, value: object) -> tuple[int, ...]:  # noqa: D102 - documented on Constraint
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise Rejected
        items = tuple(value)
        if not all(_is_integer(item) and item >= self.minimum for item in items):
            raise Rejected
        numbers_ = tuple(int(item) for item in items)
        if any(a >= b for a, b in itertools.pairwise(numbers_)):
            raise Rejected
        return numbers_


@dataclass(frozen=True)
class Custom(Constraint):
    """A constraint with its own words and parser (``parse`` raises :class:`Rejected`)."""

    words: str
    parser: Callable[[object], Any]

    @property
    def expected(self) -> str:  # noqa: D102 - documented on Constraint
        return self.words

    def parse(self, value: object) -> Any:  # noqa: D102 - documented on Constraint
        return self.parser(value)


def check(
    value: object,
    constraint: Constraint,
    *,
    where: str,
    parameter: str,
    error: type[GenMeasuresError],
) -> Any:
    """Return the canonical form of one value, or raise ``error`` in the common grammar.

    Args:
        value: The value received.
        constraint: What the parameter accepts.
        where: The measure, settings group or file.
        parameter: The parameter's name as the user wrote it.
        error: The library's exception class for this entry point.

    Raises:
        GenMeasuresError: ``error``, with :func:`rejection`'s message.
    """
    try:
        return constraint.parse(value)
    except Rejected:
        raise error(rejection(where, parameter, constraint.expected, value)) from None


@dataclass(frozen=True)
class Declared:
    """One declared setting: its name, default, constraint and documentation line."""

    name: str
    default: Any
    constraint: Constraint
    doc: str


def setting(default: Any, constraint: Constraint, doc: str) -> Any:
    """Declare a field of a :class:`Settings` dataclass.

    Args:
        default: Its default value (already canonical).
        constraint: What it accepts.
        doc: One line saying what it is, shown by ``genmeasures list NAME`` and the docs.

    Returns:
        A :func:`dataclasses.field` carrying the declaration.
    """
    return field(default=default, metadata={"constraint": constraint, "doc": doc})


def declared(cls: type[Settings]) -> dict[str, Declared]:
    """The declared settings of a :class:`Settings` class, in field order."""
    result = {}
    for item in fields(cls):
        if "constraint" not in item.metadata:
            raise TypeError(f"{cls.__name__}.{item.name} is not declared with setting()")
        default = item.default if item.default is not MISSING else None
        result[item.name] = Declared(
            item.name, default, item.metadata["constraint"], item.metadata["doc"]
        )
    return result


def check_settings(
    cls: type[Settings],
    given: Mapping[str, Any],
    *,
    where: str | None = None,
    error: type[GenMeasuresError] | None = None,
    kind: str = "setting",
) -> dict[str, Any]:
    """Check a mapping against a settings class; return every setting's canonical value.

    Args:
        cls: The :class:`Settings` subclass.
        given: The values received; the others take their defaults.
        where: Overrides ``cls.WHERE`` (e.g. the measure's name).
        error: Overrides ``cls.ERROR``.
        kind: What a key is called in the unknown-key message (``"option"``, ``"setting"``).

    Returns:
        Name → canonical value, for every declared setting, in declaration order.

    Raises:
        GenMeasuresError: ``error`` for an unknown key, a rejected value or a rejected
            combination (:meth:`Settings.check_together`).
    """
    where = cls.WHERE if where is None else where
    error = cls.ERROR if error is None else error
    declarations = declared(cls)
    unknown = sorted(set(given) - set(declarations))
    if unknown:
        accepted = ", ".join(declarations) or "none"
        raise error(f"{where}: unknown {kind}(s) {', '.join(unknown)}; accepted: {accepted}.")
    values = {
        name: check(
            given.get(name, item.default),
            item.constraint,
            where=where,
            parameter=name,
            error=error,
        )
        for name, item in declarations.items()
    }
    problem = cls.check_together(values)
    if problem is not None:
        raise error(rejection(where, *problem))
    return values


def build(
    cls: type[SettingsT],
    given: Mapping[str, Any],
    *,
    where: str | None = None,
    error: type[GenMeasuresError] | None = None,
    kind: str = "setting",
) -> SettingsT:
    """Construct a settings object from a mapping, naming ``where`` in any rejection.

    The same checks as constructing ``cls(**given)``, but an unknown key is reported in the common
    grammar instead of a ``TypeError``, and ``where``/``error`` may name the caller's context.
    """
    return cls(**check_settings(cls, given, where=where, error=error, kind=kind))


@dataclass(frozen=True)
class Settings:
    """Base of a frozen dataclass of declared settings (see :func:`setting`).

    Subclasses set ``WHERE`` (how a rejection names them) and ``ERROR`` (the exception class),
    and may override :meth:`check_together` for constraints between fields. Construction checks
    and canonicalizes every field.
    """

    WHERE: ClassVar[str] = "settings"
    ERROR: ClassVar[type[GenMeasuresError]] = GenMeasuresError

    def __post_init__(self) -> None:
        current = {name: getattr(self, name) for name in declared(type(self))}
        for name, value in check_settings(type(self), current).items():
            object.__setattr__(self, name, value)

    @classmethod
    def check_together(cls, values: Mapping[str, Any]) -> tuple[str, str, Any] | None:
        """Check constraints between fields of canonical ``values``.

        Returns:
            None if they hold, else ``(parameter, expected, received)`` for :func:`rejection`.
        """
        return None

    def as_dict(self) -> dict[str, Any]:
        """Name → canonical value, in declaration order."""
        return {name: getattr(self, name) for name in declared(type(self))}


def settings_table(cls: type[Settings]) -> list[dict[str, Any]]:
    """Rows (name, default, accepts, doc) describing a settings class, for listings and docs."""
    return [
        {
            "name": item.name,
            "default": item.default,
            "accepts": item.constraint.expected,
            "doc": item.doc,
        }
        for item in declared(cls).values()
    ]
