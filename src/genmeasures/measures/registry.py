"""The one registry of measures.

A measure is a function ``fn(ctx, **params) -> MeasureOutput`` decorated with
:func:`register_measure`. Its metadata (equation, family, inputs it needs, whether it is
stochastic, aliases) drives the CLI listing, the documentation and the contract tests that run
over every registered measure.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genmeasures.errors import MeasureError, UnknownMeasureError

if TYPE_CHECKING:
    from genmeasures.measures.result import MeasureOutput

#: The inputs a measure can need (``MEASURES.md`` §1.7 and §6).
#: ``data``: the training set; ``shape``: only one input's shape; ``init``: the initial weights;
#: ``records``: the training-time records.
INPUT_KINDS = ("data", "shape", "init", "records")

MeasureFn = Callable[..., "MeasureOutput"]


@dataclass(frozen=True)
class MeasureSpec:
    """Metadata of one registered measure.

    Attributes:
        name: Canonical kebab-case name (``MEASURES.md`` §1.8).
        fn: The function computing it, ``fn(ctx, **validate_params(options))``.
        eq: Equation label in Jiang et al. (2020), e.g. ``"44"`` or ``"27 (=29)"``; ``"-"`` if none.
        family: Family name of the catalog (``"spectral"``, ``"norm"``, ``"path"``, ...).
        needs: Inputs it needs, a subset of :data:`INPUT_KINDS`.
        stochastic: ``"no"``, ``"no*"`` (power iteration from a random start), ``"yes"`` or
            ``"opt"``.
        aliases: Other labels of the paper's tables, matched case-insensitively.
        defaults: Keyword parameters the measure accepts, with their default values.
        fixed: Keyword parameters bound by this registration (e.g. the spectral variant); they
            are recorded with every value but cannot be changed.
        description: One line saying what it is.
    """

    name: str
    fn: MeasureFn
    eq: str
    family: str
    needs: frozenset[str]
    stochastic: str
    aliases: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return the full keyword arguments of ``fn``: fixed ones, defaults, then ``params``.

        Raises:
            MeasureError: if a key is not a parameter of this measure.
        """
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "none"
            raise MeasureError(
                f"measure {self.name!r} got unknown option(s) {unknown}; it accepts: {accepted}"
            )
        return {**self.fixed, **self.defaults, **params}


_REGISTRY: dict[str, MeasureSpec] = {}
_ALIASES: dict[str, str] = {}


def _keyword_defaults(fn: MeasureFn, fixed: dict[str, Any]) -> dict[str, Any]:
    defaults = {}
    for parameter in list(inspect.signature(fn).parameters.values())[1:]:
        if parameter.name in fixed:
            continue
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"measure function {fn.__name__}: parameters after ctx must be keyword-only"
            )
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(
                f"measure function {fn.__name__}: option {parameter.name!r} needs a default"
            )
        defaults[parameter.name] = parameter.default
    return defaults


def register_measure(
    name: str,
    *,
    eq: str | int,
    family: str,
    needs: Iterable[str] = (),
    stochastic: str = "no",
    aliases: Iterable[str] = (),
    fixed: dict[str, Any] | None = None,
    description: str | None = None,
) -> Callable[[MeasureFn], MeasureFn]:
    """Register a measure function under ``name``.

    Args:
        name: Canonical name.
        eq: Equation number in Jiang et al. (2020).
        family: Catalog family.
        needs: Inputs it needs (see :data:`INPUT_KINDS`).
        stochastic: One of ``"no"``, ``"no*"``, ``"yes"``, ``"opt"``.
        aliases: Other labels, matched case-insensitively.
        fixed: Keyword arguments bound for this registration and hidden from the user's options;
            used to register the ``-reshaped`` variants from the same function.
        description: One line saying what it is; defaults to the first line of the docstring
            (give one when a function is registered under several names).

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    needs = frozenset(needs)
    if not needs <= set(INPUT_KINDS):
        raise ValueError(f"{name}: unknown input kinds {sorted(needs - set(INPUT_KINDS))}")
    if stochastic not in ("no", "no*", "yes", "opt"):
        raise ValueError(f"{name}: stochastic must be no, no*, yes or opt, got {stochastic!r}")
    fixed = dict(fixed or {})

    def decorator(fn: MeasureFn) -> MeasureFn:
        if name in _REGISTRY:
            raise ValueError(f"measure {name!r} is registered twice")
        defaults = _keyword_defaults(fn, fixed)
        doc = description or inspect.getdoc(fn) or ""
        _REGISTRY[name] = MeasureSpec(
            name=name,
            fn=fn,
            eq=str(eq),
            family=family,
            needs=needs,
            stochastic=stochastic,
            aliases=tuple(aliases),
            defaults=defaults,
            fixed=fixed,
            description=doc.splitlines()[0] if doc else "",
        )
        for label in (name, *aliases):
            key = label.lower()
            if _ALIASES.get(key, name) != name:
                raise ValueError(
                    f"alias {label!r} of {name!r} is already used by {_ALIASES[key]!r}"
                )
            _ALIASES[key] = name
        return fn

    return decorator


def _ensure_loaded() -> None:
    # The family modules register their measures on import.
    import genmeasures.measures.families  # noqa: F401


def get_measure(name: str) -> MeasureSpec:
    """Return the spec of a measure by its name or one of its aliases (case-insensitive).

    Raises:
        UnknownMeasureError: listing the close matches and how to see every name.
    """
    _ensure_loaded()
    canonical = _ALIASES.get(name.lower())
    if canonical is not None:
        return _REGISTRY[canonical]
    close = difflib.get_close_matches(name.lower(), list(_ALIASES), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(sorted({_ALIASES[c] for c in close}))}?" if close else ""
    raise UnknownMeasureError(
        f"unknown measure {name!r}.{hint} Run `genmeasures list` or "
        "`genmeasures.list_measures()` to see every name."
    )


def list_measures(pattern: str | None = None) -> list[MeasureSpec]:
    """Return the registered measures whose name matches a glob pattern, in catalog order.

    Args:
        pattern: A shell-style glob such as ``"*spec*"``; ``None`` or ``"all"`` selects every
            measure.
    """
    _ensure_loaded()
    specs = sorted(_REGISTRY.values(), key=_catalog_order)
    if pattern is None or pattern == "all":
        return specs
    return [spec for spec in specs if fnmatch.fnmatchcase(spec.name, pattern.lower())]


def _catalog_order(spec: MeasureSpec) -> tuple[float, str]:
    number = spec.eq.split()[0]
    return (float(number) if number.isdigit() else float("inf"), spec.name)


def resolve_measures(measures: str | Iterable[str]) -> list[tuple[MeasureSpec, bool]]:
    """Turn the ``measures`` argument of :func:`genmeasures.compute` into specs.

    Args:
        measures: ``"all"``, a name, a glob pattern, or a list of them. An item starting with
            ``!`` removes what it names or matches from the items before it, e.g.
            ``["all", "!hessian-*"]``.

    Returns:
        Each selected spec once, in the order given, with whether it was named explicitly (a
        missing input is then an error rather than a result reported as missing).

    Raises:
        UnknownMeasureError: for a name that is not registered.
        MeasureError: for a pattern that matches nothing, a selection left empty, or a malformed
            argument.
    """
    items = [measures] if isinstance(measures, str) else list(measures)
    if not items or not all(isinstance(item, str) for item in items):
        raise MeasureError(
            f"measures must be 'all', a name, a glob pattern or a list of them, got {measures!r}"
        )
    selected: dict[str, tuple[MeasureSpec, bool]] = {}
    for item in items:
        excluded = item.startswith("!")
        term = item[1:] if excluded else item
        pattern = term == "all" or any(ch in term for ch in "*?[")
        specs = list_measures(term) if pattern else [get_measure(term)]
        if not specs:
            raise MeasureError(
                f"measures pattern {term!r} matches no measure; run `genmeasures list`"
            )
        for spec in specs:
            if excluded:
                selected.pop(spec.name, None)
            elif pattern:
                selected.setdefault(spec.name, (spec, False))
            else:
                selected[spec.name] = (spec, True)
    if not selected:
        raise MeasureError(f"measures {measures!r} select no measure")
    return list(selected.values())
