"""Model checkpoints without pickle: safetensors weights plus a JSON model spec.

A model spec is what :func:`genmeasures.build_model` needs to rebuild the architecture::

    {"name": "mlp", "input_shape": [40], "num_classes": 10, "hparams": {"depth": 2, "width": 64}}

A trained run is saved to one folder by :func:`save_run` and read back by :func:`load_run`
(or file by file with :func:`load_checkpoint`)::

    final.safetensors    the trained model (parameters and buffers)
    init.safetensors     the model before the first update
    epoch1.safetensors   the state after the first epoch (MEASURES.md §2.5, R2), when there is one
    records.json         the other training records (R1, R3), the status and the metrics
    model.json           the model spec, written last: a folder with it is complete

Every file is written under a temporary name and renamed. Loading never executes code from a file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from genmeasures.errors import ModelError
from genmeasures.models import build_model

if TYPE_CHECKING:
    from genmeasures.zoo.states import ModelState
    from genmeasures.zoo.train import TrainingRun

SPEC_KEYS = ("name", "input_shape", "num_classes", "hparams")

FINAL_FILE = "final.safetensors"
INIT_FILE = "init.safetensors"
EPOCH1_FILE = "epoch1.safetensors"
RECORDS_FILE = "records.json"
SPEC_FILE = "model.json"


@dataclass
class LoadedRun:
    """A model read back from checkpoint files.

    Attributes:
        model: The trained model, in eval mode.
        init_model: The model before training, in eval mode, or None if no file was given.
        spec: The model spec the models were built from.
        records: The training records (``MEASURES.md`` §2.5) with ``epoch1_state`` (None when
            the run has none), plus ``status`` and ``metrics``; None when no records file was
            given.
    """

    model: nn.Module
    init_model: nn.Module | None
    spec: dict[str, Any]
    records: dict[str, Any] | None = None


def model_spec(
    name: str, input_shape: tuple[int, ...], num_classes: int, **hparams: Any
) -> dict[str, Any]:
    """A JSON-serializable model spec for :func:`build_model`.

    Args:
        name: Registry name of the model (``"mlp"``, ``"lenet"``, ...).
        input_shape: Shape of one input example, without the batch dimension.
        num_classes: Number of logits.
        **hparams: The model's hyperparameters (``seed`` included, to rebuild the init).

    Returns:
        The spec as a dict of JSON types.
    """
    return {
        "name": name,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "hparams": hparams,
    }


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_state(path: str | os.PathLike, state: Mapping[str, torch.Tensor]) -> None:
    """Write a state dict as safetensors, under a temporary name then renamed.

    Args:
        path: The ``.safetensors`` file to write.
        state: Parameters and buffers, e.g. ``model.state_dict()``.
    """
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    _atomic_write(Path(path), lambda target: save_file(tensors, str(target)))


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, allow_nan=False)
    _atomic_write(path, lambda target: target.write_text(text))


def save_spec(path: str | os.PathLike, spec: Mapping[str, Any]) -> None:
    """Write a model spec as JSON, under a temporary name then renamed.

    Args:
        path: The ``.json`` file to write.
        spec: A spec from :func:`model_spec`.
    """
    _write_json(Path(path), dict(spec))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nan_if_none(value: Any) -> Any:
    return math.nan if value is None else value


def save_run(folder: str | os.PathLike, run: TrainingRun, spec: Mapping[str, Any]) -> Path:
    """Write a trained run to a folder (created if needed); see the module docstring.

    Non-finite numbers in the records and metrics are written as JSON ``null``.

    Args:
        folder: The folder to write to.
        run: The result of :func:`genmeasures.zoo.train.train_to_target`.
        spec: The model spec the run's model was built from (:func:`model_spec`).

    Returns:
        The folder, as a :class:`~pathlib.Path`.
    """
    return write_run(
        folder,
        final_state=run.model.state_dict(),
        init_state=run.init_model.state_dict(),
        records=run.records,
        status=run.status,
        metrics=run.metrics,
        spec=spec,
    )


def write_run(
    folder: str | os.PathLike,
    *,
    final_state: Mapping[str, torch.Tensor],
    init_state: Mapping[str, torch.Tensor],
    records: Mapping[str, Any],
    status: ModelState,
    metrics: Mapping[str, float],
    spec: Mapping[str, Any],
) -> Path:
    """Write a run given as state dicts (what a zoo worker sends back); see :func:`save_run`.

    Args:
        folder: The folder to write to (created if needed).
        final_state: The trained model's parameters and buffers.
        init_state: The initial model's parameters and buffers.
        records: Training records (``MEASURES.md`` §2.5), with ``epoch1_state`` (or None).
        status: The training status.
        metrics: The final metrics.
        spec: The model spec (:func:`model_spec`).

    Returns:
        The folder, as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state(folder / FINAL_FILE, final_state)
    save_state(folder / INIT_FILE, init_state)
    json_records = dict(records)
    epoch1_state = json_records.pop("epoch1_state", None)
    if epoch1_state:
        save_state(folder / EPOCH1_FILE, epoch1_state)
    else:
        (folder / EPOCH1_FILE).unlink(missing_ok=True)
    json_records["ce_checks"] = [
        [int(t), _finite_or_none(ce)] for t, ce in json_records.get("ce_checks", [])
    ]
    json_records["status"] = str(status)
    json_records["metrics"] = {key: _finite_or_none(value) for key, value in metrics.items()}
    _write_json(folder / RECORDS_FILE, json_records)
    save_spec(folder / SPEC_FILE, spec)
    return folder


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a model spec.

    Args:
        path: A JSON file written by :func:`save_spec`.

    Returns:
        The spec.

    Raises:
        ModelError: naming the file if it is missing, not JSON, lacks a key or has a key of the
            wrong type.
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError) as error:
        raise ModelError(f"model spec {path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"model spec {path} is not valid JSON: {error}") from error
    missing = [key for key in SPEC_KEYS if key not in spec] if isinstance(spec, dict) else SPEC_KEYS
    if missing:
        raise ModelError(
            f"model spec {path} must be a JSON object with keys {SPEC_KEYS}; "
            f"missing {list(missing)}"
        )
    expected = {"name": str, "input_shape": list, "num_classes": int, "hparams": dict}
    for key, kind in expected.items():
        if not isinstance(spec[key], kind) or isinstance(spec[key], bool):
            raise ModelError(
                f"model spec {path}: {key!r} must be a JSON {kind.__name__}, got {spec[key]!r}"
            )
    return spec


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelError(
            f"weights file {path} is not a readable safetensors file: {error}"
        ) from error


def _build(spec: Mapping[str, Any], spec_path: Path | None = None) -> nn.Module:
    try:
        return build_model(
            spec["name"], tuple(spec["input_shape"]), spec["num_classes"], **spec["hparams"]
        )
    except ModelError as error:
        if spec_path is None:
            raise
        raise ModelError(f"model spec {spec_path} does not describe a model: {error}") from error


def _load_into(model: nn.Module, path: Path, spec: Mapping[str, Any]) -> nn.Module:
    state = _load_state(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(
            f"weights file {path} does not match the model spec {spec['name']!r}: {error}"
        ) from error
    return model.eval()


def load_model(weights: str | os.PathLike, spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes and load its weights from a safetensors file.

    Args:
        weights: A ``.safetensors`` file with the model's full state (parameters and buffers).
        spec: A model spec (:func:`read_spec`).

    Returns:
        The model, in eval mode.

    Raises:
        ModelError: naming the file if it is missing, unreadable or does not fit the spec.
    """
    return _load_into(_build(spec), Path(weights), spec)


def _read_records(path: Path, epoch1: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"records file {path} is not valid JSON: {error}") from error
    if not isinstance(records, dict) or not isinstance(records.get("ce_checks"), list):
        raise ModelError(f"records file {path} must be a JSON object with a list 'ce_checks'")
    try:
        records["ce_checks"] = [(int(t), float(_nan_if_none(ce))) for t, ce in records["ce_checks"]]
    except (TypeError, ValueError) as error:
        raise ModelError(f"records file {path}: 'ce_checks' must hold [t, ce] pairs") from error
    if isinstance(records.get("metrics"), dict):
        records["metrics"] = {k: _nan_if_none(v) for k, v in records["metrics"].items()}
    records["epoch1_state"] = (
        dict(_load_into(_build(spec), epoch1, spec).state_dict()) if epoch1.is_file() else None
    )
    return records


def load_checkpoint(
    weights: str | os.PathLike,
    spec: str | os.PathLike,
    init: str | os.PathLike | None = None,
    records: str | os.PathLike | None = None,
) -> LoadedRun:
    """Load a trained model, and optionally its initial model and records, from files.

    This is what ``genmeasures measure --weights W --spec S [--init I]`` uses.

    Args:
        weights: The trained model's ``.safetensors`` file.
        spec: The model spec's JSON file (:func:`save_spec`).
        init: The initial model's ``.safetensors`` file, or None.
        records: A ``records.json`` written by :func:`save_run`, or None. The epoch-1 state is
            read from ``epoch1.safetensors`` beside it, if that file exists.

    Returns:
        The models in eval mode, the spec and the records.

    Raises:
        ModelError: naming the file that is missing, unreadable or inconsistent with the spec.
    """
    spec_path = Path(spec)
    model_spec_ = read_spec(spec_path)
    model = _load_into(_build(model_spec_, spec_path), Path(weights), model_spec_)
    init_model = None if init is None else _load_into(_build(model_spec_), Path(init), model_spec_)
    loaded_records = None
    if records is not None:
        records_path = Path(records)
        if not records_path.is_file():
            raise ModelError(f"records file {records_path} does not exist")
        loaded_records = _read_records(
            records_path, records_path.with_name(EPOCH1_FILE), model_spec_
        )
    return LoadedRun(model=model, init_model=init_model, spec=model_spec_, records=loaded_records)


def load_run(folder: str | os.PathLike) -> LoadedRun:
    """Load a folder written by :func:`save_run`.

    Args:
        folder: The folder; ``records.json`` and ``epoch1.safetensors`` are optional.

    Returns:
        The trained and initial models in eval mode, the spec and the records (None without
        ``records.json``).

    Raises:
        ModelError: naming the file that is missing, unreadable or inconsistent with the spec.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"run folder {folder} does not exist")
    records = folder / RECORDS_FILE
    return load_checkpoint(
        folder / FINAL_FILE,
        folder / SPEC_FILE,
        folder / INIT_FILE,
        records if records.is_file() else None,
    )
