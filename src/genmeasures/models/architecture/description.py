"""The :class:`Architecture` a network is described by, and the domains measures declare."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

#: The domains a measure can declare, from the widest: any differentiable network; a network with
#: weight matrices; a chain of layers; a network of positively homogeneous units.
REQUIREMENTS = ("differentiable", "weights", "chain", "homogeneous")

#: What each requirement asks, as messages say it.
REQUIREMENT_TEXT = {
    "differentiable": "any differentiable network",
    "weights": "a network with weight matrices",
    "chain": (
        "a chain of layers (weight layers connected only through elementwise activations, "
        "pooling, reshapes, dropout and foldable BatchNorm)"
    ),
    "homogeneous": (
        "a network of positively homogeneous units (ReLU, leaky ReLU, max-pool, identity, "
        "linear maps; no normalization layer, gate or attention)"
    ),
}


#: The note of a layer whose outputs are the network's outputs.
OUTPUT_NOTE = "its outputs are the network's outputs"


@dataclass(frozen=True)
class LayerInfo:
    """One weight layer (or weight matrix) of the network, in forward order.

    Attributes:
        name: Module path; ``path.param`` for a projection of attention or a module's own matrix.
        kind: ``linear``, ``conv1d``, ``conv2d``, ``conv3d``, ``embedding``,
            ``attention-projection`` or ``matrix`` (any other module's own weight matrix).
        module_type: Class name of the module holding it.
        rescaling_symmetry: Whether rescaling this layer's output units (and inversely the next
            layer's inputs) leaves the network's function unchanged: the outputs go through
            positively homogeneous units only to the next weight layers (no normalization, no
            residual mixing, not the network's output).
        note: Why node rescaling is not a symmetry here; empty when it is.
    """

    name: str
    kind: str
    module_type: str
    rescaling_symmetry: bool = False
    note: str = ""

    @property
    def feeds_output(self) -> bool:
        """Whether this layer's outputs are the network's outputs (a last layer)."""
        return self.note == OUTPUT_NOTE


@dataclass(frozen=True)
class Connection:
    """Something that makes the network more than a chain of layers.

    Attributes:
        kind: ``residual addition``, ``concatenation``, ``multiplicative gate``, ``attention``,
            ``weight sharing``, ``non-chain weight layer`` or ``untraced operation``.
        where: The module path where it happens (the innermost module whose forward does it);
            empty for the top-level forward.
        detail: What exactly, for a message.
    """

    kind: str
    where: str
    detail: str = ""

    def message(self) -> str:
        """``residual addition at `layer1.0` (detail)``."""
        where = f"`{self.where}`" if self.where else "the model's top-level forward"
        return f"{self.kind} at {where}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Normalization:
    """One normalization layer.

    Attributes:
        name: Module path (or where the functional call happens).
        kind: ``batchnorm``, ``layernorm``, ``groupnorm``, ``rmsnorm``, ``instancenorm``...
        foldable: Whether it is a BatchNorm that folds into the Linear/Conv layer before it
            (Jiang et al. 2020, appendix C.1), so that the measures see an affine network.
        module_type: The module class (``LayerNorm``), or the function (``F.layer_norm``).
        note: Why a BatchNorm cannot be folded; empty otherwise.
    """

    name: str
    kind: str
    foldable: bool
    module_type: str = ""
    note: str = ""

    def message(self) -> str:
        """``normalization layer `norm1` (LayerNorm)``, with why a BatchNorm does not fold."""
        where = f"`{self.name}`" if self.name else "the model's top-level forward"
        text = f"normalization layer {where} ({self.module_type or self.kind})"
        return text + (f": not foldable, {self.note}" if self.note else "")


@dataclass(frozen=True)
class Activation:
    """One activation, pooling or other pointwise unit between weight layers.

    Attributes:
        name: Module path, or where a functional call happens.
        kind: The module class or function name (``ReLU``, ``tanh``, ``max_pool2d``...).
        homogeneous: Whether it is positively homogeneous, ``σ(αx) = α σ(x)`` for ``α > 0``.
    """

    name: str
    kind: str
    homogeneous: bool


@dataclass(frozen=True)
class Architecture:
    """The analysis of one network (:func:`describe`).

    Attributes:
        weight_layers: The weight layers, in forward order.
        connections: What makes it more than a chain (empty for a chain of Linear/Conv layers).
        normalizations: Its normalization layers.
        activations: Its activations, poolings and other units between weight layers (reshapes
            and dropout excluded).
        method: ``"fx"`` (read from a ``torch.fx`` trace) or ``"hooks"`` (the fallback).
        trace_error: Why tracing failed, for ``"hooks"``.
    """

    weight_layers: tuple[LayerInfo, ...]
    connections: tuple[Connection, ...]
    normalizations: tuple[Normalization, ...]
    activations: tuple[Activation, ...]
    method: str
    trace_error: str = ""

    @property
    def chain_breaks(self) -> list[str]:
        """Why the network is not a chain, one message per reason; empty for a chain."""
        return [c.message() for c in self.connections] + [
            n.message() for n in self.normalizations if not n.foldable
        ]

    @property
    def homogeneity_breaks(self) -> list[str]:
        """Why the network is not made of positively homogeneous units; empty if it is."""
        units = {"multiplicative gate", "attention", "untraced operation", "non-chain weight layer"}
        return (
            [c.message() for c in self.connections if c.kind in units]
            + [n.message() for n in self.normalizations if not n.foldable]
            + [
                f"activation {a.kind} at `{a.name}` is not positively homogeneous"
                for a in self.activations
                if not a.homogeneous
            ]
        )

    @property
    def is_chain(self) -> bool:
        """Weight layers connected only through pointwise units and foldable BatchNorm."""
        return not self.chain_breaks

    @property
    def is_homogeneous(self) -> bool:
        """Made only of positively homogeneous units and linear maps (path-norm's domain)."""
        return not self.homogeneity_breaks

    @property
    def rescaling_invariant(self) -> bool:
        """Whether node rescaling is a symmetry at every hidden weight layer.

        Then normalized sharpness's invariance to node rescaling (Tsuzuku et al. 2020) is an
        invariance of the network's function; a last layer's outputs are never rescaled.
        """
        return self.is_homogeneous and all(
            layer.rescaling_symmetry or layer.feeds_output for layer in self.weight_layers
        )

    def violation(self, requirement: str) -> str | None:
        """Why the network is outside a measure's domain, or None if it is inside.

        Args:
            requirement: One of :data:`REQUIREMENTS`.
        """
        if requirement not in REQUIREMENTS:
            raise ValueError(f"unknown requirement {requirement!r}; one of {REQUIREMENTS}")
        if requirement == "differentiable":
            return None
        if not self.weight_layers:
            return "the network has no weight layer"
        if requirement == "weights":
            return None
        breaks = self.chain_breaks if requirement == "chain" else self.homogeneity_breaks
        return breaks[0] if breaks else None

    def summary(self) -> str:
        """A few lines saying what the network is."""
        kinds = Counter(layer.kind for layer in self.weight_layers)
        lines = [
            f"weight layers: {len(self.weight_layers)} ("
            + ", ".join(f"{n} {k}" for k, n in kinds.items())
            + ")",
            "chain: yes" if self.is_chain else f"chain: no ({'; '.join(self.chain_breaks)})",
            "positively homogeneous: yes"
            if self.is_homogeneous
            else f"positively homogeneous: no ({'; '.join(self.homogeneity_breaks)})",
            f"read from: {self.method}" + (f" ({self.trace_error})" if self.trace_error else ""),
        ]
        return "\n".join(lines)
