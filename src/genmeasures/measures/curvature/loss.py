"""The training loss as a function of the parameters, and its Hessian-vector products.

``L(θ) = (1/N) Σ_n CE(f_θ(x_n), y_n)`` of the model in eval mode over the whole training set (see
the package docstring): :class:`_Loss` holds it as a function of a chosen subset of the
parameters (a :class:`~genmeasures.measures.functional.FunctionalNetwork`), with its gradients and
Hessian-vector products summed over the mini-batches, and the Rademacher probes of the stochastic
estimators. :func:`hvp` is the public Hessian-vector product w.r.t. every parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.func import grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from genmeasures.errors import MeasureError
from genmeasures.measures.context import MeasureContext
from genmeasures.measures.functional import FunctionalNetwork, Params, layer_parameter_names
from genmeasures.measures.parameters import FOLDED_LAYERS, differentiated_parameters

__all__ = ["CHUNK_BYTES", "MAX_VECTORS_PER_PASS", "Params", "hvp"]

#: Upper bound on the memory of one chunk of vectors (probes, per-example gradients), in bytes
#: counted in float64.
CHUNK_BYTES = 64 * 2**20

#: At most this many vectors go through one vectorized (``vmap``) pass, which also bounds the
#: activation memory to this many copies of one mini-batch's.
MAX_VECTORS_PER_PASS = 32


# ---------------------------------------------------------------------------------- the loss


class _Loss:
    """The training loss as a function of a subset of the parameters.

    Without ``names``: of θ, :func:`~genmeasures.measures.parameters.differentiated_parameters`
    (every parameter of the folded model; of the unfolded model if it cannot be folded). With
    ``names``: of those parameters of the folded model.
    """

    def __init__(self, ctx: MeasureContext, names: Sequence[str] | None = None) -> None:
        ctx.logits  # noqa: B018  (validates the output shape, finiteness and the labels' range)
        self.ctx = ctx
        if names is None:
            theta = differentiated_parameters(ctx)
            model, names, self.description = theta.model, list(theta.names), theta.description
        else:
            model, self.description = ctx.folded_model, FOLDED_LAYERS
        self.network = FunctionalNetwork(model, names)
        self.model = self.network.model
        self.params: Params = self.network.params
        self.names = self.network.names
        self.num_train = ctx.num_train

    @property
    def selected(self) -> Params:
        """The differentiated parameters, detached."""
        return self.network.selected

    @property
    def size(self) -> int:
        """Number of differentiated scalars."""
        return self.network.size

    def batch_loss(self, selected: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Σ_batch CE / N with ``selected`` substituted for those parameters.

        Scaled dot-product attention runs on its math kernel, made of differentiable primitive
        operations: the fused kernels (flash, memory-efficient) have no forward-mode derivative,
        which the Hessian-vector products need. Networks without attention are unaffected.
        """
        with sdpa_kernel(SDPBackend.MATH):
            logits = self.network(selected, x)
        return F.cross_entropy(logits, y, reduction="sum") / self.num_train

    def batch_grad(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[Params], Params]:
        """``selected ↦ ∇ batch_loss`` as a function (for ``jvp``/``vmap``)."""

        def loss(selected: Params) -> torch.Tensor:
            return self.batch_loss(selected, x, y)

        return grad(loss)

    def zeros(self, leading: tuple[int, ...] = ()) -> Params:
        """float64 zeros shaped like the differentiated parameters, with leading dimensions."""
        return {
            n: torch.zeros(
                (*leading, *self.params[n].shape), dtype=torch.float64, device=self.ctx.device
            )
            for n in self.names
        }

    def chunk_size(self) -> int:
        """How many vectors of the differentiated parameters' size go through one pass."""
        return max(1, min(MAX_VECTORS_PER_PASS, CHUNK_BYTES // (8 * max(1, self.size))))

    def rademacher(self, generator: torch.Generator, count: int) -> Params:
        """``count`` Rademacher probes, drawn one at a time, stacked along a leading dimension."""
        probes: list[Params] = []
        for _ in range(count):
            probe = {}
            for n in self.names:
                p = self.params[n]
                bits = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
                probe[n] = (2 * bits - 1).to(p.dtype)
            probes.append(probe)
        return {n: torch.stack([probe[n] for probe in probes]) for n in self.names}

    def hvps(self, vectors: Params) -> Params:
        """H·v of L for a stack of vectors (leading dimension K), summed over the batches.

        One forward-over-reverse product per batch and vector (``vmap`` over the K vectors).
        """
        count = next(iter(vectors.values())).shape[0]
        total = self.zeros((count,))
        selected = self.selected
        for x, y in self.ctx.batches():
            gradient = self.batch_grad(x, y)

            def product(vector: Params, g: Callable[[Params], Params] = gradient) -> Params:
                return jvp(g, (selected,), (vector,))[1]

            products = vmap(product)(vectors)
            for n in self.names:
                total[n] += products[n].double()
        return total

    def gradients(self, points: Params) -> Params:
        """∇L at a stack of parameter points (leading dimension K), summed over the batches."""
        count = next(iter(points.values())).shape[0]
        total = self.zeros((count,))
        for x, y in self.ctx.batches():
            gradients = vmap(self.batch_grad(x, y))(points)
            for n in self.names:
                total[n] += gradients[n].double()
        return total


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _like(tensor: torch.Tensor) -> dict[str, object]:
    return {"dtype": tensor.dtype, "device": tensor.device}


# ---------------------------------------------------------------------------------- public API


def hvp(ctx: MeasureContext, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Hessian-vector product of the training loss w.r.t. all parameters of the model.

    ``L(θ) = (1/N) Σ_n CE(f_θ(x_n), y_n)`` over the whole training set, eval mode, θ every
    parameter of :attr:`MeasureContext.folded_model` in ``named_parameters()`` order (weights and
    biases); of :attr:`MeasureContext.model` for a network that cannot be folded
    (:func:`~genmeasures.measures.parameters.differentiated_parameters`). Computed
    forward-over-reverse (``torch.func.jvp`` of ``grad``), accumulated over the mini-batches.
    Cost: about 2 gradient-equivalents.

    Args:
        ctx: The measure context (needs the training set).
        vectors: One tensor per parameter, in ``named_parameters()`` order, each of that
            parameter's shape.

    Returns:
        ``H·v`` as one float64 tensor per parameter, in the same order.

    Raises:
        MeasureError: if the number or shapes of ``vectors`` do not match the parameters.
    """
    loss = _Loss(ctx)
    shapes = [tuple(loss.params[n].shape) for n in loss.names]
    received = [
        tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in vectors
    ]
    if received != shapes:
        raise MeasureError(
            f"hvp: vectors must be one tensor per parameter of θ ({loss.description}) "
            f"({', '.join(loss.names)}) with shapes {shapes}, got {received}"
        )
    stacked = {
        n: v.detach().to(**_like(loss.params[n]))[None]
        for n, v in zip(loss.names, vectors, strict=True)
    }
    products = loss.hvps(stacked)
    return [products[n][0] for n in loss.names]


def _weight_names(ctx: MeasureContext) -> list[str]:
    """Parameter names of the layers' weights in the folded model, in forward order.

    Raises:
        ModelError: if a layer's weight is not a parameter of the folded model.
    """
    return layer_parameter_names(ctx.folded_model, ctx.layers, biases=False)
