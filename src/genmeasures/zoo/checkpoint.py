"""Model checkpoints without pickle: safetensors weights plus a JSON model spec.

A model spec is what :func:`genmeasures.build_model` needs to rebuild the architecture::

    {"name": "mlp", "input_shape": [40], "num_classes": 10, "hparams": {"depth": 2, "width": 64}}

Loading a checkpoint never executes code from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.models import build_model

SPEC_KEYS = ("name", "input_shape", "num_classes", "hparams")


def model_spec(name: str, input_shape: tuple[int, ...], num_classes: int, **hparams: Any) -> dict:
    """A JSON-serializable model spec for :func:`build_model`."""
    return {
        "name": name,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "hparams": hparams,
    }


def _atomic_write(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_state(path: str | os.PathLike, state: Mapping[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, under a temporary name then renamed."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    _atomic_write(Path(path), lambda target: save_file(tensors, str(target)))


def save_spec(path: str | os.PathLike, spec: Mapping[str, Any]) -> None:
    """Write a model spec as JSON, under a temporary name then renamed."""
    _atomic_write(Path(path), lambda target: Path(target).write_text(json.dumps(spec, indent=2)))


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a model spec.

    Raises:
        ModelError: naming the file if it is missing, not JSON, or lacks a key.
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ModelError(f"model spec {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ModelError(f"model spec {path} is not valid JSON: {error}") from error
    missing = [key for key in SPEC_KEYS if key not in spec] if isinstance(spec, dict) else SPEC_KEYS
    if missing:
        raise ModelError(
            f"model spec {path} must be a JSON object with keys {SPEC_KEYS}; "
            f"missing {list(missing)}"
        )
    return spec


def load_model(weights: str | os.PathLike, spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes and load its weights from a safetensors file.

    Raises:
        ModelError: naming the file if it is missing, unreadable or does not fit the spec.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"weights file {weights} does not exist")
    model = build_model(
        spec["name"], tuple(spec["input_shape"]), int(spec["num_classes"]), **spec["hparams"]
    )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelError(
            f"weights file {weights} is not a readable safetensors file: {error}"
        ) from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(
            f"weights file {weights} does not match the model spec {spec['name']!r}: {error}"
        ) from error
    return model.eval()
