"""Hand-written networks outside the papers' chains, shared by the architecture and domain tests.

Each builder returns a float64 network with ``input_shape`` set and seeded weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _seeded(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(
                    0.1 * torch.randn(module.num_features, generator=generator)
                )
                module.running_var.copy_(1 + torch.rand(module.num_features, generator=generator))
    model.input_shape = input_shape
    return model.double()


class ResidualMLP(nn.Module):
    """x → Linear → ReLU → (h + Linear(ReLU(Linear(h)))) → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = torch.relu(h + self.fc2(torch.relu(self.fc1(h))))
        return self.out(h)


class ConcatNet(nn.Module):
    """Two ReLU branches of the input, concatenated, then a Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(5, 4)
        self.right = nn.Linear(5, 3)
        self.out = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.out(both)


class TransformerBlock(nn.Module):
    """A pre-norm transformer block on (tokens, dim) inputs, mean-pooled, then a Linear head."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


class BasicBlock(nn.Module):
    """conv → BN → ReLU → conv → BN, plus the input, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + x)


class ResidualCNN(nn.Module):
    """Stem conv + BN + ReLU, two residual blocks, global average pool, Linear."""

    def __init__(self, in_channels: int = 2, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(BasicBlock(channels), BasicBlock(channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        return self.fc(torch.flatten(self.pool(self.layer1(h)), 1))


def residual_mlp(seed: int = 0) -> nn.Module:
    """A ReLU MLP with one residual block, on (5,)."""
    return _seeded(ResidualMLP(), (5,), seed)


def tanh_mlp(seed: int = 0) -> nn.Module:
    """A chain 5 → 6 → 6 → 3 with tanh activations."""
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    return _seeded(model, (5,), seed)


def concat_net(seed: int = 0) -> nn.Module:
    """Two ReLU branches concatenated, on (5,)."""
    return _seeded(ConcatNet(), (5,), seed)


def transformer_block(seed: int = 0) -> nn.Module:
    """One transformer block with nn.MultiheadAttention and LayerNorm, on (4 tokens, 8)."""
    return _seeded(TransformerBlock(), (4, 8), seed)


def residual_cnn(seed: int = 0) -> nn.Module:
    """A small residual CNN with foldable BatchNorm, on (2, 6, 6)."""
    return _seeded(ResidualCNN(), (2, 6, 6), seed)


NETWORKS = {
    "residual_mlp": residual_mlp,
    "tanh_mlp": tanh_mlp,
    "concat_net": concat_net,
    "transformer_block": transformer_block,
    "residual_cnn": residual_cnn,
}


# ------------------------------------------- a ReLU MLP and the rescalings that keep its function


def relu_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 4-8-8-3 ReLU MLP in float64 (an ``nn.Sequential``), 40 inputs and labels, all seeded.

    PyTorch's default initialization draws from the global generator: it is forked, so the seed
    does not leak into other tests.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
        ).double()
        x = torch.randn(40, 4, dtype=torch.float64)
        y = torch.randint(0, 3, (40,))
    return model, x, y


def rescaled_layer(model: nn.Module, c: float, layer: int = 0) -> nn.Module:
    """Hidden layer ``model[layer]`` (weight and bias) times c, the next layer's weight over c."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[layer].weight.mul_(c)
        scaled[layer].bias.mul_(c)
        scaled[layer + 2].weight.div_(c)
    return scaled


def rescaled_nodes(model: nn.Module, layer: int = 2) -> nn.Module:
    """Node j of hidden layer ``model[layer]`` times c_j (row and bias), column j next over c_j.

    The default rescales the second hidden layer, whose nodes are the penultimate features.
    """
    scaled = copy.deepcopy(model)
    c = torch.linspace(0.2, 6.0, 8, dtype=torch.float64)
    with torch.no_grad():
        scaled[layer].weight.mul_(c[:, None])
        scaled[layer].bias.mul_(c)
        scaled[layer + 2].weight.div_(c[None, :])
    return scaled
