"""The weight matrices of any network: the one view the weight-matrix measures read.

On the papers' networks (every BatchNorm folds and every parametrized module is a Linear or Conv
layer) the weight matrices are exactly :attr:`MeasureContext.layers`, the folded weight layers
(``MEASURES.md`` §1.2), so every value there is the value the catalog defines. On any other
network (LayerNorm, attention, embeddings, custom parameters: :attr:`MeasureContext.layers` raises
:class:`~genmeasures.errors.UnsupportedLayerError`) they are the weight matrices that
:func:`genmeasures.describe` lists, of the unfolded eval-mode network, as :class:`WeightMatrix`
records with the attributes the measures read from a
:class:`~genmeasures.models.WeightLayer` (``name``, ``kind``, ``weight``, ``matrix``,
``geometry``, ``input_shape``, ``kernel_area``).

**Which tensors count.** A tensor counts when it *multiplies* the activations (or the input):
a weight matrix is a linear map, and the norms of eqs 33, 36-42 and normalized sharpness measure
linear maps. So:

- every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` weight (``out × in·k``), as on the papers' networks;
- the projections of ``nn.MultiheadAttention``: its packed ``in_proj_weight`` is three maps, the
  query, key and value projections, counted as three ``E × E`` matrices
  (``attn.in_proj_weight[q]``, ``[k]``, ``[v]``), or its separate ``q/k/v_proj_weight``; and
  ``out_proj``;
- embedding tables (``nn.Embedding``, ``nn.EmbeddingBag``): a lookup is the product of the table
  with a one-hot input, so the table, viewed as ``dim × vocabulary`` (output × input), is a
  weight matrix;
- any other module's own parameter that the network multiplies with an activation
  (``matmul``/``@``, ``F.linear``, ``F.conv*``, ``einsum``, ``F.embedding``, read from the
  ``torch.fx`` graph; if the network cannot be traced, its 2-d parameters).

Additive parameters do not count: biases, position embeddings and class tokens added or
concatenated to the activations, attention's ``bias_k``/``bias_v``, and the affine parameters of
normalization layers. They shift activations and are not linear maps; biases are excluded on the
papers' networks too (``MEASURES.md`` §3.4). BatchNorm is not folded on such a network (folding is
defined only where every normalization folds); its parameters are normalization parameters.

The initial counterpart of each matrix is the same tensor (same parameter, same rows) of
``init_model``, matched by parameter name; on the papers' networks it is
:attr:`MeasureContext.init_layers`, matched by position.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from genmeasures.errors import ModelError, NumericalError
from genmeasures.models import ConvGeometry, WeightLayer
from genmeasures.models.probe import WEIGHT_TYPES, record_calls

if TYPE_CHECKING:
    from genmeasures.measures.context import MeasureContext
    from genmeasures.models.architecture import LayerInfo

__all__ = [
    "FOLDED",
    "UNFOLDED",
    "WeightMatrix",
    "initial_matrices",
    "matrices_description",
    "parameter_names",
    "weight_matrices",
]

#: ``extra["weights"]`` of a measure computed on the folded weight layers (the papers' networks).
FOLDED = "folded weight layers"
#: ``extra["weights"]`` of a measure computed on the weight matrices of the unfolded network.
UNFOLDED = "weight matrices of the unfolded network"

_QKV = ("q", "k", "v")


@dataclass(frozen=True)
class WeightMatrix:
    """One weight matrix of a network that cannot be folded, read like a ``WeightLayer``.

    Attributes:
        name: Its name: the layer of :func:`genmeasures.describe` (``mlp.0``, ``attn.out_proj``,
            ``emb``), or ``attn.in_proj_weight[q]`` for one of the packed attention projections.
        layer: The name of its layer in :attr:`Architecture.weight_layers` (for the per-layer
            rescaling flags).
        parameter: The parameter holding it, as in ``model.named_parameters()``.
        kind: The layer's kind (``linear``, ``conv2d``, ``embedding``, ``attention-projection``,
            ``matrix``).
        tensor: That parameter (the model's own tensor, not a copy).
        rows: The rows of ``tensor`` it is, ``(start, stop)``, or None for all of them.
        transposed: Whether ``tensor`` is stored ``in × out`` (an embedding table, a matrix
            multiplied from the right), so that :attr:`weight` is its transpose.
        geometry: A convolution's geometry, None otherwise.
        input_shape: A convolution's recorded input shape (its operator norm needs it), or None.
    """

    name: str
    layer: str
    parameter: str
    kind: str
    tensor: torch.Tensor
    rows: tuple[int, int] | None = None
    transposed: bool = False
    geometry: ConvGeometry | None = None
    input_shape: tuple[int, ...] | None = None

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The same view (rows, orientation) of ``tensor``, the parameter or its gradient."""
        if self.rows is not None:
            tensor = tensor[self.rows[0] : self.rows[1]]
        return tensor.transpose(0, 1) if self.transposed else tensor

    @property
    def weight(self) -> torch.Tensor:
        """The matrix in PyTorch layout, output dimension first (a conv keeps its kernel dims)."""
        return self.of(self.tensor)

    @property
    def matrix(self) -> torch.Tensor:
        """The weight viewed as an ``out × in`` matrix (``MEASURES.md`` §1.4)."""
        weight = self.weight
        return weight.reshape(weight.shape[0], -1)

    @property
    def kernel_area(self) -> int:
        """Product of the kernel dimensions; 1 for anything but a convolution."""
        return 1 if self.geometry is None else math.prod(self.geometry.kernel_size)


def weight_matrices(ctx: MeasureContext) -> list[WeightLayer] | list[WeightMatrix]:
    """The network's weight matrices in forward order: :attr:`MeasureContext.layers` if it folds.

    Raises:
        ModelError: if the network has no weight matrix.
        NumericalError: if one has a non-finite entry (naming it).
    """
    if ctx.foldable:
        return ctx.layers
    return ctx.cached("matrices/unfolded", lambda: _unfolded_matrices(ctx, ctx.model))


def initial_matrices(ctx: MeasureContext) -> list[WeightLayer] | list[WeightMatrix]:
    """The initial network's counterparts of :func:`weight_matrices`, in the same order.

    Raises:
        MissingInputError: without an initial model.
        ModelError: if a parameter is missing from ``init_model`` or has another shape there.
    """
    if ctx.foldable:
        return ctx.init_layers

    def compute() -> list[WeightMatrix]:
        return [
            _replace_tensor(matrix, ctx.initial_parameter(matrix.parameter, matrix.tensor.shape))
            for matrix in weight_matrices(ctx)
        ]

    return ctx.cached("matrices/initial", compute)


def matrices_description(ctx: MeasureContext) -> str:
    """:data:`FOLDED` or :data:`UNFOLDED`, as recorded in ``extra["weights"]``."""
    return FOLDED if ctx.foldable else UNFOLDED


def parameter_names(ctx: MeasureContext) -> list[str]:
    """Names of the parameters holding the unfolded weight matrices, each once, in order."""
    return list(dict.fromkeys(m.parameter for m in weight_matrices(ctx)))  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------- reading


def _replace_tensor(matrix: WeightMatrix, tensor: torch.Tensor) -> WeightMatrix:
    return WeightMatrix(
        matrix.name,
        matrix.layer,
        matrix.parameter,
        matrix.kind,
        tensor,
        matrix.rows,
        matrix.transposed,
        matrix.geometry,
        matrix.input_shape,
    )


def _unfolded_matrices(ctx: MeasureContext, model: nn.Module) -> list[WeightMatrix]:
    params = dict(model.named_parameters())
    usage = _matrix_usage(model)
    matrices: list[WeightMatrix] = []
    for info in ctx.architecture.weight_layers:
        matrices.extend(_matrices_of(info, model, params, usage))
    if not matrices:
        raise ModelError("the model has no weight matrix")
    _record_input_shapes(ctx, model, matrices)
    for matrix in matrices:
        if not torch.isfinite(matrix.tensor).all():
            raise NumericalError(f"model: weight matrix {matrix.name!r} has a non-finite entry")
    return matrices


def _matrices_of(
    info: LayerInfo,
    model: nn.Module,
    params: dict[str, torch.Tensor],
    usage: dict[str, bool | None],
) -> list[WeightMatrix]:
    """The weight matrices of one layer of :func:`genmeasures.describe`."""
    name, kind = info.name, info.kind
    if name in params:  # a module's own parameter: attention's in_proj_weight, a custom matrix
        tensor = params[name]
        if kind == "attention-projection" and name.endswith("in_proj_weight"):
            size = tensor.shape[0] // 3
            return [
                WeightMatrix(
                    f"{name}[{part}]", name, name, kind, tensor, (i * size, (i + 1) * size)
                )
                for i, part in enumerate(_QKV)
            ]
        if kind == "attention-projection":  # q/k/v_proj_weight; bias_k/bias_v are additive
            if tensor.dim() != 2 or name.endswith(("bias_k", "bias_v")):
                return []
            return [WeightMatrix(name, name, name, kind, tensor)]
        if name in usage:  # traced: counted iff multiplied with an activation
            transposed = usage[name]
            if transposed is None:  # added, concatenated...: additive
                return []
            return [WeightMatrix(name, name, name, kind, tensor, transposed=transposed)]
        if tensor.dim() != 2:  # untraced: only plain matrices
            return []
        return [WeightMatrix(name, name, name, kind, tensor)]
    module = model.get_submodule(name)
    parameter = f"{name}.weight" if name else "weight"
    geometry = None
    if isinstance(module, WEIGHT_TYPES) and not isinstance(module, nn.Linear):
        geometry = ConvGeometry.from_module(module)
    transposed = kind == "embedding"
    return [
        WeightMatrix(name, name, parameter, kind, params[parameter], None, transposed, geometry)
    ]


def _record_input_shapes(
    ctx: MeasureContext, model: nn.Module, matrices: list[WeightMatrix]
) -> None:
    """Fill in each convolution's input shape (at its first call) for its operator norm."""
    convs = [i for i, m in enumerate(matrices) if m.geometry is not None]
    if not convs or ctx.input_shape is None:
        return
    modules = [model.get_submodule(matrices[i].name) for i in convs]
    shapes: dict[int, tuple[int, ...]] = {}
    for call in record_calls(model, tuple(ctx.input_shape), modules):
        shapes.setdefault(id(call.module), tuple(call.input.shape[1:]))
    for i, module in zip(convs, modules, strict=True):
        matrices[i] = WeightMatrix(
            *(getattr(matrices[i], f) for f in ("name", "layer", "parameter", "kind", "tensor")),
            matrices[i].rows,
            matrices[i].transposed,
            matrices[i].geometry,
            shapes.get(id(module)),
        )


# ---------------------------------------------------------------------------------- fx usage

#: Operations that multiply their operands (a parameter among them is a linear map).
PRODUCTS = {
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.einsum,
    operator.matmul,
    F.linear,
    F.bilinear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.embedding,
}
PRODUCT_METHODS = {"matmul", "mm", "bmm", "__matmul__"}
#: Operations that only view or move a tensor; a transpose flips its orientation.
_VIEWS = {"reshape", "view", "contiguous", "to", "type", "float", "double", "half", "squeeze"}
_VIEWS |= {"unsqueeze", "flatten"}
_TRANSPOSES = {"t", "transpose", "mT", "T", "permute"}


def _matrix_usage(model: nn.Module) -> dict[str, bool | None]:
    """For each parameter read in the traced forward: how it multiplies activations.

    ``True``: multiplied as an ``in × out`` matrix (``x @ W``), ``False``: as ``out × in``
    (``F.linear(x, W)``, ``W @ x``, a conv kernel), ``None``: never multiplied (additive).
    Empty when the model cannot be traced.
    """
    from genmeasures.models.architecture import Tracer

    try:
        graph = Tracer().trace(model)
    except Exception:  # untraceable: the caller falls back to the 2-d rule
        return {}
    usage: dict[str, bool | None] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            usage[str(node.target)] = _product_orientation(node, False)
    return usage


def _product_orientation(node: fx.Node, transposed: bool) -> bool | None:
    """Follow a parameter through views to a product; its orientation there, or None."""
    for user in node.users:
        target = user.target
        method = user.op == "call_method" or (user.op == "call_function" and target is getattr)
        name = user.args[1] if user.op == "call_function" and target is getattr else target
        if method and name in _VIEWS:
            found = _product_orientation(user, transposed)
        elif method and name in _TRANSPOSES:
            found = _product_orientation(user, not transposed)
        elif target is F.embedding:
            found = not transposed  # F.embedding(input, table): the table is in × out
        elif target in PRODUCTS or (user.op == "call_method" and target in PRODUCT_METHODS):
            right = target in (torch.matmul, operator.matmul, torch.mm, torch.bmm) or (
                user.op == "call_method" and user.args[0] is not node
            )
            on_right = right and len(user.args) > 1 and user.args[1] is node
            found = transposed != on_right
        else:
            found = None
        if found is not None:
            return found
    return None
