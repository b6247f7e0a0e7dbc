"""Model builders behind one registry: ``mlp``, ``lenet``, ``nin`` and ``wrn``.

Every builder returns an ``nn.Module`` on the CPU, in train mode, with ReLU activations, that maps a
batch of inputs of shape ``(N, *input_shape)`` to logits of shape ``(N, num_classes)`` (no softmax;
Jiang et al. 2020, appendix A). The input shape of one example is stored on the model as
``model.input_shape`` (a tuple) so that :func:`genmeasures.models.weight_layers` and
:func:`genmeasures.models.fold_batchnorm` can find it.

Seeding: the hyperparameter ``seed`` (every model accepts it) makes the initial parameters a pure
function of the seed. The model is constructed inside ``torch.random.fork_rng(devices=[])`` after
seeding the CPU default generator, so the parameters get PyTorch's default initialization and the
caller's global RNG state is restored afterwards (the build is not safe against *other threads*
drawing from the global CPU generator at the same time). Models are always constructed on the CPU.
With ``seed=None`` the global RNG is used, as in plain PyTorch.

Convolutional models accept one example of shape ``(C, H, W)`` (Conv2d), ``(C, L)`` (Conv1d) or
``(L,)`` (treated as ``(1, L)`` by a leading :class:`AddChannelDim` module).
"""

from __future__ import annotations

import difflib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.validation import (
    Custom,
    Declared,
    Flag,
    Integer,
    Maybe,
    Real,
    Rejected,
    Settings,
    build,
    check,
    declared,
    rejection,
    setting,
)

__all__ = [
    "SEED",
    "AddChannelDim",
    "LeNetHyperparameters",
    "MLPHyperparameters",
    "NiNHyperparameters",
    "PostActBasicBlock",
    "PreActBasicBlock",
    "WRNHyperparameters",
    "build_meta_model",
    "build_model",
    "default_hparams",
    "hyperparameters",
    "list_models",
]


class AddChannelDim(nn.Module):
    """Insert a channel dimension of size 1: ``(N, L) -> (N, 1, L)``.

    It lets the convolutional builders take flat sequences such as MNIST-1D examples.
    """

    piecewise_linear = True
    """Read by :func:`genmeasures.models.uses_piecewise_linear_activations`: a reshape is linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` with a new dimension 1."""
        return x.unsqueeze(1)


@dataclass(frozen=True)
class _Ops:
    """The layer classes of one spatial dimensionality (1-d or 2-d)."""

    conv: type[nn.Conv1d] | type[nn.Conv2d]
    batchnorm: type[nn.BatchNorm1d] | type[nn.BatchNorm2d]
    maxpool: type[nn.MaxPool1d] | type[nn.MaxPool2d]
    global_avgpool: type[nn.AdaptiveAvgPool1d] | type[nn.AdaptiveAvgPool2d]


_OPS = {
    1: _Ops(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
    2: _Ops(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
}


@dataclass(frozen=True)
class _ConvInput:
    """A convolutional model's view of one input example."""

    channels: int
    spatial: tuple[int, ...]
    add_channel: bool

    @property
    def ops(self) -> _Ops:
        return _OPS[len(self.spatial)]

    def stem(self) -> list[tuple[str, nn.Module]]:
        """The modules that bring the input to ``(N, C, *spatial)`` (empty unless 1-d)."""
        return [("add_channel", AddChannelDim())] if self.add_channel else []


def _conv_input(model: str, input_shape: tuple[int, ...]) -> _ConvInput:
    if len(input_shape) == 1:
        return _ConvInput(1, input_shape, add_channel=True)
    if len(input_shape) in (2, 3):
        return _ConvInput(input_shape[0], input_shape[1:], add_channel=False)
    raise ModelError(
        f"model {model!r}: input_shape must be (C, H, W), (C, L) or (L,) for a convolutional "
        f"model, received {input_shape!r}."
    )


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block of a Wide ResNet (Zagoruyko & Komodakis 2016).

    ``out = conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))) + shortcut``, where the shortcut is ``x``
    or, when the shape changes, a 1×1 convolution of ``relu(bn1(x))``. All convolutions have
    ``bias=False``. ``bn1`` precedes a convolution, so it cannot be folded (MEASURES.md §1.2).
    """

    def __init__(
        self, ops: _Ops, in_channels: int, out_channels: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.bn1 = ops.batchnorm(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = ops.conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = ops.batchnorm(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = ops.conv(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ops.conv(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        skip = x if self.shortcut is None else self.shortcut(activated)
        return out + skip


class PostActBasicBlock(nn.Module):
    """Post-activation basic block (conv → BN → ReLU), the variant whose BatchNorms can be folded.

    ``out = relu(bn2(conv2(dropout(relu(bn1(conv1(x)))))) + shortcut)``, where the shortcut is ``x``
    or, when the shape changes, a 1×1 convolution followed by BatchNorm. Convolutions have
    ``bias=False``; every BatchNorm directly follows its convolution.
    """

    def __init__(
        self, ops: _Ops, in_channels: int, out_channels: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.conv1 = ops.conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = ops.batchnorm(out_channels)
        self.relu1 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = ops.conv(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = ops.batchnorm(out_channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=ops.conv(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=ops.batchnorm(out_channels),
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.bn2(self.conv2(self.dropout(self.relu1(self.bn1(self.conv1(x))))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + skip)


def _build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int,
    width: int,
    dropout: float,
    batchnorm: bool,
    bias: bool,
) -> nn.Module:
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    fan_in = math.prod(input_shape)
    for i in range(1, depth + 1):
        layers.append((f"fc{i}", nn.Linear(fan_in, width, bias=bias)))
        if batchnorm:
            layers.append((f"bn{i}", nn.BatchNorm1d(width)))
        layers.append((f"relu{i}", nn.ReLU()))
        layers.append((f"dropout{i}", nn.Dropout(dropout)))
        fan_in = width
    layers.append(("out", nn.Linear(fan_in, num_classes, bias=bias)))
    return nn.Sequential(OrderedDict(layers))


def _build_lenet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    inp = _conv_input("lenet", input_shape)
    if min(inp.spatial) < 4:
        raise ModelError(
            f"model 'lenet': every spatial size of input_shape must be >= 4 (two 2× max-pools), "
            f"received {input_shape!r}."
        )
    ops = inp.ops
    features = nn.Sequential(
        OrderedDict(
            conv1=ops.conv(inp.channels, 6, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=ops.maxpool(2),
            conv2=ops.conv(6, 16, 5, padding=2),
            relu2=nn.ReLU(),
            pool2=ops.maxpool(2),
        )
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, inp.channels, *inp.spatial)).numel()
    classifier = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(flat, 120),
            relu3=nn.ReLU(),
            fc2=nn.Linear(120, 84),
            relu4=nn.ReLU(),
            fc3=nn.Linear(84, num_classes),
        )
    )
    return nn.Sequential(
        OrderedDict(
            [
                *inp.stem(),
                ("features", features),
                ("flatten", nn.Flatten()),
                ("classifier", classifier),
            ]
        )
    )


def _build_nin(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int,
    width: int,
    dropout: float,
    batchnorm: bool,
) -> nn.Module:
    inp = _conv_input("nin", input_shape)
    ops = inp.ops

    def unit(i: int, in_channels: int, kernel: int, stride: int) -> list[tuple[str, nn.Module]]:
        conv = ops.conv(
            in_channels, width, kernel, stride=stride, padding=kernel // 2, bias=not batchnorm
        )
        bn = [(f"bn{i}", ops.batchnorm(width))] if batchnorm else []
        return [(f"conv{i}", conv), *bn, (f"relu{i}", nn.ReLU())]

    layers = inp.stem()
    in_channels = inp.channels
    for b in range(1, depth + 1):
        block = [*unit(1, in_channels, 3, 2), *unit(2, width, 1, 1), *unit(3, width, 1, 1)]
        block.append(("dropout", nn.Dropout(dropout)))
        layers.append((f"block{b}", nn.Sequential(OrderedDict(block))))
        in_channels = width
    layers += [
        ("classifier", ops.conv(width, num_classes, 1)),
        ("pool", ops.global_avgpool(1)),
        ("flatten", nn.Flatten()),
    ]
    return nn.Sequential(OrderedDict(layers))


def _build_wrn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int,
    width: int,
    dropout: float,
    preact: bool,
) -> nn.Module:
    inp = _conv_input("wrn", input_shape)
    ops = inp.ops
    blocks_per_group = (depth - 4) // 6
    block_type = PreActBasicBlock if preact else PostActBasicBlock
    layers = inp.stem()
    layers.append(("conv", ops.conv(inp.channels, 16, 3, padding=1, bias=False)))
    if not preact:
        layers += [("bn", ops.batchnorm(16)), ("relu", nn.ReLU())]
    in_channels = 16
    for g, (channels, stride) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True), start=1):
        group = []
        for b in range(blocks_per_group):
            block = block_type(ops, in_channels, channels * width, stride if b == 0 else 1, dropout)
            group.append((f"block{b + 1}", block))
            in_channels = channels * width
        layers.append((f"group{g}", nn.Sequential(OrderedDict(group))))
    if preact:
        layers += [("bn", ops.batchnorm(in_channels)), ("relu", nn.ReLU())]
    layers += [
        ("pool", ops.global_avgpool(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(in_channels, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _wrn_depth(value: object) -> int:
    depth = Integer(10).parse(value)
    if (depth - 4) % 6 != 0:
        raise Rejected
    return depth


_DROPOUT = Real(0.0, 1.0, open_maximum=True)
_WIDTH = Integer(1)

#: The hyperparameter every model accepts besides its own (see the module docstring).
SEED = Maybe(Integer(0, 2**64 - 1))


@dataclass(frozen=True)
class MLPHyperparameters(Settings):
    """Hyperparameters of ``mlp`` (see :func:`build_model`)."""

    WHERE = "model 'mlp'"
    ERROR = ModelError

    depth: int = setting(2, Integer(0), "number of hidden layers")
    width: int = setting(512, _WIDTH, "units per hidden layer")
    dropout: float = setting(0.0, _DROPOUT, "dropout probability after each hidden ReLU")
    batchnorm: bool = setting(False, Flag(), "BatchNorm1d after each hidden Linear")
    bias: bool = setting(True, Flag(), "Linear layers with a bias")


@dataclass(frozen=True)
class LeNetHyperparameters(Settings):
    """``lenet`` has no hyperparameters besides ``seed``."""

    WHERE = "model 'lenet'"
    ERROR = ModelError


@dataclass(frozen=True)
class NiNHyperparameters(Settings):
    """Hyperparameters of ``nin`` (see :func:`build_model`)."""

    WHERE = "model 'nin'"
    ERROR = ModelError

    depth: int = setting(2, Integer(1), "number of NiN-blocks")
    width: int = setting(192, _WIDTH, "output channels per block")
    dropout: float = setting(0.0, _DROPOUT, "dropout probability at the end of each block")
    batchnorm: bool = setting(True, Flag(), "BatchNorm after each convolution of a block")


@dataclass(frozen=True)
class WRNHyperparameters(Settings):
    """Hyperparameters of ``wrn`` (see :func:`build_model`)."""

    WHERE = "model 'wrn'"
    ERROR = ModelError

    depth: int = setting(
        16,
        Custom("an integer >= 10 with depth - 4 divisible by 6", _wrn_depth),
        "depth 6n + 4 of WRN-depth-width",
    )
    width: int = setting(4, _WIDTH, "widen factor")
    dropout: float = setting(0.0, _DROPOUT, "dropout probability between a block's convolutions")
    preact: bool = setting(True, Flag(), "pre-activation blocks (the original WRN)")


@dataclass(frozen=True)
class _ModelSpec:
    """A registered model: its builder and its hyperparameters (``seed`` is handled centrally)."""

    build: Callable[..., nn.Module]
    hparams: type[Settings]


_REGISTRY: dict[str, _ModelSpec] = {
    "mlp": _ModelSpec(_build_mlp, MLPHyperparameters),
    "lenet": _ModelSpec(_build_lenet, LeNetHyperparameters),
    "nin": _ModelSpec(_build_nin, NiNHyperparameters),
    "wrn": _ModelSpec(_build_wrn, WRNHyperparameters),
}


def list_models() -> list[str]:
    """Return the names of the registered models, sorted."""
    return sorted(_REGISTRY)


def _spec(name: object) -> _ModelSpec:
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelError(
            rejection("build_model", "name", f"one of {', '.join(list_models())}", name) + hint
        )
    return _REGISTRY[name]


def hyperparameters(name: str) -> dict[str, Declared]:
    """The declared hyperparameters of model ``name`` except ``seed``, in declaration order.

    Each :class:`~genmeasures.validation.Declared` holds the default, the constraint (what the
    hyperparameter accepts) and one line of documentation; :func:`build_model` checks its keyword
    arguments against them, and a zoo space reads them to check a grid before building anything.

    Raises:
        ModelError: If ``name`` is not a registered model.
    """
    return declared(_spec(name).hparams)


def default_hparams(name: str) -> dict[str, object]:
    """Return the default hyperparameters of model ``name``, ``seed`` included.

    Raises:
        ModelError: If ``name`` is not a registered model.
    """
    return {key: item.default for key, item in hyperparameters(name).items()} | {"seed": None}


def _input_shape(value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise Rejected
    return tuple(Integer(1).parse(size) for size in value)


_INPUT_SHAPE = Custom(
    "a non-empty sequence of positive integers (one example, no batch dimension)", _input_shape
)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Construct on the CPU; with a seed, from a private CPU RNG state (global state restored)."""
    with torch.device("cpu"):
        if seed is None:
            yield
            return
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **hparams: object
) -> nn.Module:
    """Build a registered model with ReLU activations that outputs logits.

    Models (hyperparameters with their defaults; every model also takes ``seed=None``):

    - ``mlp`` (``depth=2``: number of hidden layers, ``width=512``, ``dropout=0.0``,
      ``batchnorm=False``: BatchNorm1d after each hidden Linear, before its ReLU, ``bias=True``).
      Flattens any input shape.
    - ``lenet``: LeNet-5 style, conv 6@5×5 → ReLU → max-pool 2 → conv 16@5×5 → ReLU → max-pool 2 →
      fc 120 → fc 84 → fc ``num_classes``; convolutions use padding 2, so any spatial size >= 4
      works (8×8 digits, 28×28 MNIST, 32×32 CIFAR-10); the flatten size comes from a dummy forward.
    - ``nin``: the Network-in-Network of Jiang et al. 2020, appendix C.3 (``depth=2`` NiN-blocks,
      ``width=192`` output channels per block, ``dropout=0.0``, ``batchnorm=True``). A NiN-block is
      conv 3×3 stride 2 padding 1 → BN → ReLU → conv 1×1 → BN → ReLU → conv 1×1 → BN → ReLU →
      Dropout; then a 1×1 conv to ``num_classes``, global average pooling and flatten. With
      BatchNorm the block convolutions have ``bias=False`` (appendix C.1: BN in every model).
    - ``wrn``: Wide ResNet WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016; ``depth=16``:
      must be ``6n + 4``, ``width=4``: widen factor, ``dropout=0.0``, ``preact=True``). With
      ``preact=True`` (the original) the blocks are :class:`PreActBasicBlock` and the network ends
      with BN → ReLU; those BatchNorms precede their convolution, so
      :func:`~genmeasures.models.fold_batchnorm` raises ``UnsupportedLayerError`` naming the first
      of them, which makes the weight-based measures unavailable (MEASURES.md §1.2). With
      ``preact=False`` the blocks are :class:`PostActBasicBlock` (conv → BN → ReLU, stem conv → BN →
      ReLU) and every BatchNorm folds.

    Convolutional models take one example of shape ``(C, H, W)``, ``(C, L)`` (1-d layers) or
    ``(L,)`` (one channel). Parameters use PyTorch's default initialization.

    Args:
        name: A name from :func:`list_models`.
        input_shape: Shape of one input example, without the batch dimension.
        num_classes: Number of logits (>= 1).
        **hparams: The model's hyperparameters (see above).

    Returns:
        The model, on the CPU and in train mode, with attribute ``input_shape`` (a tuple of ints).

    Raises:
        ModelError: For an unknown model or hyperparameter, a bad hyperparameter value, a bad
            ``num_classes`` or an input shape the model cannot take; the message names the model,
            the parameter, what was expected and what was received.
    """
    checked = _checked(name, input_shape, num_classes, hparams)
    with _seeded(checked.seed):
        model = checked.build()
    model.input_shape = checked.input_shape
    return model


def build_meta_model(
    name: str, input_shape: Sequence[int], num_classes: int, **hparams: object
) -> nn.Module:
    """The model :func:`build_model` builds, on the ``meta`` device: shapes without values.

    It takes no memory for its parameters and little time (no initialization is computed), so
    a model's size can be known before it is built: ``sum(p.numel() for p in m.parameters())``.

    Raises:
        ModelError: As :func:`build_model`.
        RuntimeError: If a tensor of the model would have more than ``2**63`` bytes (torch's
            storage size overflows).
    """
    checked = _checked(name, input_shape, num_classes, hparams)
    with torch.device("meta"):
        model = checked.build()
    model.input_shape = checked.input_shape
    return model


@dataclass(frozen=True)
class _Checked:
    """The arguments of a build, checked and canonical."""

    spec: _ModelSpec
    input_shape: tuple[int, ...]
    num_classes: int
    seed: int | None
    hparams: dict[str, object]

    def build(self) -> nn.Module:
        return self.spec.build(self.input_shape, self.num_classes, **self.hparams)


def _checked(
    name: str, input_shape: Sequence[int], num_classes: int, hparams: dict[str, object]
) -> _Checked:
    spec = _spec(name)
    where = f"model {name!r}"
    shape = check(input_shape, _INPUT_SHAPE, where=where, parameter="input_shape", error=ModelError)
    num_classes = check(
        num_classes, Integer(1), where=where, parameter="num_classes", error=ModelError
    )
    given = dict(hparams)
    seed = check(given.pop("seed", None), SEED, where=where, parameter="seed", error=ModelError)
    known = hyperparameters(name)
    for key, value in given.items():
        if key not in known:
            close = difflib.get_close_matches(key, [*known, "seed"], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ModelError(
                f"{where}: unknown hyperparameter {key!r} (received {key}={value!r}); "
                f"accepted: {', '.join(sorted([*known, 'seed']))}.{hint}"
            )
    kwargs = build(spec.hparams, given).as_dict()
    return _Checked(spec, shape, num_classes, seed, kwargs)
