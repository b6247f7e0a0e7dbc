"""Cost of every measure on networks written outside this project: a small ResNet and a small ViT.

Both are Hugging Face ``transformers`` models built from small configs (no weights downloaded),
trained on scikit-learn's digits as 1×8×8 images to a training cross-entropy of about 0.05. Each
measure is computed alone, from a fresh context, and its time is divided by the time of one
forward pass over the training set (the unit, "FE"; measured in the same run, median of repeats).
The Hessian measures are also given in gradient-equivalents ("GE": one forward and backward pass
of the mean loss over the training set). Then the default measure set of a study (every measure
but ``hessian-trace`` and ``hessian-max-eig``) is computed in one call, sharing its caches, and
its total is compared with the issue's target of 150 FE.

    python benchmarks/architectures.py                  # both networks, 2 threads
    python benchmarks/architectures.py --networks vit --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import genmeasures as gm

TARGET_FE = 150.0
HESSIAN = ("hessian-trace", "hessian-max-eig")


def networks() -> dict[str, Callable[[int], nn.Module]]:
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    def resnet(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        config = ResNetConfig(
            num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10
        )
        return ResNetForImageClassification(config)

    def vit(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        config = ViTConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=10,
        )
        return ViTForImageClassification(config)

    return {"resnet": resnet, "vit": vit}


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: float = 0.05) -> float:
    """Adam, batch 64, until the training cross-entropy is at most ``target`` (or 300 epochs)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(logits(model, x[batch]), y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            ce = float(F.cross_entropy(logits(model, x), y))
        if ce <= target:
            break
    return ce


def unit_seconds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median seconds of one forward pass over the training set, and of one gradient."""
    forward, gradient = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for batch in x.split(512):
                logits(model, batch)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.zero_grad()
        for xb, yb in zip(x.split(512), y.split(512), strict=True):
            (F.cross_entropy(logits(model, xb), yb, reduction="sum") / len(y)).backward()
        gradient.append(time.perf_counter() - start)
    return statistics.median(forward), statistics.median(gradient)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet", "vit"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = gm.load_dataset("digits", normalize=True)
    x, y = data.train
    x = x.reshape(-1, 1, 8, 8)
    builders = networks()
    for name in args.networks:
        model, init = builders[name](0), builders[name](1)
        start = time.perf_counter()
        ce = train(model, x, y)
        print(
            f"\n{name}: {sum(p.numel() for p in model.parameters())} parameters, trained to "
            f"CE {ce:.3f} in {time.perf_counter() - start:.1f} s; {len(y)} examples, "
            f"{args.threads} threads"
        )
        fe, ge = unit_seconds(model, x, y, args.repeats)
        print(
            f"unit: forward pass over the training set {fe:.4f} s (FE), gradient {ge:.4f} s "
            f"(GE = {ge / fe:.1f} FE)"
        )
        print(f"{'measure':32} {'status':12} {'seconds':>9} {'FE':>9} {'GE':>7}")
        for spec in gm.list_measures():
            status, seconds = measure_alone(model, init, x, y, spec.name)
            cost = f"{seconds / fe:9.1f}" if status == "ok" else f"{'-':>9}"
            in_ge = (
                f"{seconds / ge:7.1f}" if status == "ok" and spec.name.startswith("hess") else ""
            )
            print(f"{spec.name:32} {status:12} {seconds:9.3f} {cost} {in_ge:>7}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            results = gm.compute(
                model, (x, y), measures=["all", *(f"!{h}" for h in HESSIAN)], init_model=init
            )
            total = time.perf_counter() - start
        ok = sum(results[n].status == "ok" for n in results)
        verdict = "PASS" if total / fe <= TARGET_FE else "MISS"
        print(
            f"default set (all but {', '.join(HESSIAN)}), one call: {ok} ok of {len(results)}, "
            f"{total:.2f} s = {total / fe:.1f} FE; target <= {TARGET_FE:g} FE: {verdict}"
        )


def measure_alone(
    model: nn.Module, init: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str
) -> tuple[str, float]:
    """One measure from a fresh context: its status and seconds (NaN when not computed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        try:
            result = gm.compute(model, (x, y), measures=name, init_model=init)[name]
        except gm.MissingInputError:
            return "missing", math.nan
        except (gm.UnsupportedLayerError, gm.UnsupportedInputError):
            return "unsupported", math.nan
        return result.status, time.perf_counter() - start


if __name__ == "__main__":
    main()
