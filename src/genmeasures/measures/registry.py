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
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genmeasures.errors import (
    MeasureError,
    ModelError,
    UnknownMeasureError,
    UnsupportedLayerError,
)
from genmeasures.models.architecture import REQUIREMENT_TEXT
from genmeasures.validation import Settings, build

if TYPE_CHECKING:
    from genmeasures.measures.context import MeasureContext
    from genmeasures.measures.result import MeasureOutput

#: The inputs a measure can need (``MEASURES.md`` §1.7 and §6).
#: ``data``: the training set; ``shape``: only one input's shape; ``init``: the initial weights;
#: ``records``: the training-time records.
INPUT_KINDS = ("data", "shape", "init", "records")

#: The domains a measure can declare, where its definition holds (``ARCHITECTURE.md``, "Two rules
#: of trust"), checked by ``compute`` against :func:`genmeasures.describe`:
#: ``differentiable``: any differentiable network; ``weights``: a network with weight matrices;
#: ``chain``: a chain of layers (weight layers connected only through elementwise activations,
#: pooling, reshapes, dropout and foldable BatchNorm); ``homogeneous``: a network of positively
#: homogeneous units (a DAG is fine; a normalization layer, gate or attention is not).
DOMAINS = ("differentiable", "weights", "chain", "homogeneous")

MeasureFn = Callable[..., "MeasureOutput"]


@dataclass(frozen=True)
class MeasureSpec:
    """Metadata of one registered measure.

    Attributes:
        name: Canonical kebab-case name (``MEASURES.md`` §1.8).
        fn: The function computing it: ``fn(ctx, **fixed)``, or ``fn(ctx, options=..., **fixed)``
            for a measure with options.
        eq: Equation label in Jiang et al. (2020), e.g. ``"44"`` or ``"27 (=29)"``; ``"-"`` if none.
        family: Family name of the catalog (``"spectral"``, ``"norm"``, ``"path"``, ...).
        needs: Inputs it needs, a subset of :data:`INPUT_KINDS`.
        stochastic: ``"no"``, ``"no*"`` (power iteration from a random start), ``"yes"`` or
            ``"opt"`` (random only under an option, e.g. a subsample).
        aliases: Other labels of the paper's tables, matched case-insensitively.
        options: The :class:`~genmeasures.validation.Settings` dataclass declaring the options
            it takes (defaults, constraints, documentation), or None for a measure without any.
        fixed: Keyword parameters bound by this registration (e.g. the spectral variant); they
            are recorded with every value but cannot be changed.
        description: One line saying what it is.
        domain: The networks where its definition holds, one of :data:`DOMAINS`; outside it,
            ``compute`` reports it ``unsupported`` (:meth:`check_domain`).
        version: The implementation's version, an integer from 1: bumped when the measure's
            numbers change for the same model, data, options and seed. A study stores it with
            every value and recomputes a value stored by another version (a stale value).
    """

    name: str
    fn: MeasureFn
    eq: str
    family: str
    needs: frozenset[str]
    stochastic: str
    aliases: tuple[str, ...] = ()
    options: type[Settings] | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    domain: str = "differentiable"
    version: int = 1

    def check_domain(self, ctx: MeasureContext) -> None:
        """Raise unless the context's network is inside this measure's domain.

        Raises:
            UnsupportedLayerError: naming the module and the reason, e.g. ``residual addition at
                `layer1.0` (...): spec-init (eq 25) is defined for a chain of layers (...)``.
        """
        if self.domain == "differentiable":
            return
        try:
            reason = ctx.architecture.violation(self.domain)
        except UnsupportedLayerError:
            raise  # a ModelError too, but one that already says what is unsupported
        except ModelError as error:
            reason = f"the architecture could not be analysed ({error})"
        if reason is not None:
            eq = "" if self.eq == "-" else f" (eq {self.eq})"
            raise UnsupportedLayerError(
                f"{reason}: {self.name}{eq} is defined for {REQUIREMENT_TEXT[self.domain]}"
            )

    def canonical_options(self, given: Mapping[str, Any]) -> Settings | None:
        """Check the options given for this measure; return them with defaults, canonicalized.

        Raises:
            MeasureError: for an option it does not take or a value it does not accept, in the
                message grammar of :mod:`genmeasures.validation`.
        """
        if self.options is None:
            if given:
                raise MeasureError(
                    f"measure {self.name!r}: unknown option(s) {', '.join(sorted(given))}; "
                    "it takes no options."
                )
            return None
        return build(self.options, given, where=f"measure {self.name!r}", kind="option")

    def call(self, ctx: MeasureContext, options: Settings | None) -> MeasureOutput:
        """Compute the measure with canonical ``options`` (from :meth:`canonical_options`)."""
        if options is None:
            return self.fn(ctx, **self.fixed)
        return self.fn(ctx, options=options, **self.fixed)

    def recorded_params(self, options: Settings | None, seed: int) -> dict[str, Any]:
        """The parameters stored with a value: fixed ones, every option, the seed if it matters.

        Args:
            options: Canonical options (:meth:`canonical_options`).
            seed: The seed of ``compute``; recorded only for measures with a random component.
        """
        recorded = {**self.fixed, **({} if options is None else options.as_dict())}
        if self.stochastic != "no":
            recorded["seed"] = seed
        return recorded

    def params_key(self, given: Mapping[str, Any], seed: int) -> str:
        """The store key of a value computed with these options and seed (:func:`params_key`)."""
        return params_key(self.recorded_params(self.canonical_options(given), seed))


def params_key(params: Mapping[str, Any]) -> str:
    """Canonical JSON of a value's parameters: equal parameters give equal keys.

    Keys are sorted, tuples become lists, non-finite floats null, and any other object its
    ``repr``; the zoo stores each value under this key.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, str | int | bool) or value is None:
            return value
        return repr(value)

    return json.dumps(plain(params), sort_keys=True, separators=(",", ":"), allow_nan=False)


_REGISTRY: dict[str, MeasureSpec] = {}
_ALIASES: dict[str, str] = {}


def _check_signature(fn: MeasureFn, options: type[Settings] | None, fixed: dict[str, Any]) -> None:
    expected = {*fixed, *(("options",) if options is not None else ())}
    parameters = list(inspect.signature(fn).parameters.values())[1:]
    received = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if received != expected or len(parameters) != len(received):
        raise TypeError(
            f"measure function {fn.__name__}: after ctx it must take exactly the keyword-only "
            f"parameters {sorted(expected)}, got {[p.name for p in parameters]}"
        )


def register_measure(
    name: str,
    *,
    eq: str | int,
    family: str,
    needs: Iterable[str] = (),
    stochastic: str = "no",
    aliases: Iterable[str] = (),
    options: type[Settings] | None = None,
    fixed: dict[str, Any] | None = None,
    description: str | None = None,
    domain: str = "differentiable",
    version: int = 1,
) -> Callable[[MeasureFn], MeasureFn]:
    """Register a measure function under ``name``.

    Args:
        name: Canonical name.
        eq: Equation number in Jiang et al. (2020).
        family: Catalog family.
        needs: Inputs it needs (see :data:`INPUT_KINDS`).
        stochastic: One of ``"no"``, ``"no*"``, ``"yes"``, ``"opt"``.
        aliases: Other labels, matched case-insensitively.
        options: The :class:`~genmeasures.validation.Settings` dataclass of the options it
            takes; the function then receives them as its keyword-only ``options`` argument.
        fixed: Keyword arguments bound for this registration and hidden from the user's options;
            used to register the ``-reshaped`` variants from the same function.
        description: One line saying what it is; defaults to the first line of the docstring
            (give one when a function is registered under several names).
        domain: The networks where its definition holds, one of :data:`DOMAINS`.
        version: The implementation's version, an integer from 1; bump it when the measure's
            numbers change for the same model, data, options and seed, so that studies
            recompute the values stored by the previous version.

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    needs = frozenset(needs)
    if not needs <= set(INPUT_KINDS):
        raise ValueError(f"{name}: unknown input kinds {sorted(needs - set(INPUT_KINDS))}")
    if stochastic not in ("no", "no*", "yes", "opt"):
        raise ValueError(f"{name}: stochastic must be no, no*, yes or opt, got {stochastic!r}")
    if domain not in DOMAINS:
        raise ValueError(f"{name}: domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{name}: version must be an integer >= 1, got {version!r}")
    fixed = dict(fixed or {})

    def decorator(fn: MeasureFn) -> MeasureFn:
        if name in _REGISTRY:
            raise ValueError(f"measure {name!r} is registered twice")
        _check_signature(fn, options, fixed)
        doc = description or inspect.getdoc(fn) or ""
        _REGISTRY[name] = MeasureSpec(
            name=name,
            fn=fn,
            eq=str(eq),
            family=family,
            needs=needs,
            stochastic=stochastic,
            aliases=tuple(aliases),
            options=options,
            fixed=fixed,
            description=doc.splitlines()[0] if doc else "",
            domain=domain,
            version=version,
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


def get_measure(name: str) -> MeasureSpec:
    """Return the spec of a measure by its name or one of its aliases (case-insensitive).

    Raises:
        UnknownMeasureError: listing the close matches and how to see every name.
    """
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
    if not isinstance(measures, str | Iterable):
        raise MeasureError(
            f"measures must be 'all', a name, a glob pattern or a list of them, got {measures!r}"
        )
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
