from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch
from conftest import make_blobs

import genmeasures as gm
from genmeasures.data import Dataset
from genmeasures.zoo.checkpoint import (
    LoadedRun,
    load_checkpoint,
    load_model,
    load_run,
    model_spec,
    read_spec,
    save_run,
    save_spec,
    save_state,
)
from genmeasures.zoo.train import TrainingConfig, TrainingRun, train_to_target

HPARAMS = {"depth": 2, "width": 12, "batchnorm": True, "seed": 3}


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


def reject_constant(constant: str) -> None:
    pytest.fail(f"non-standard JSON constant {constant}")


def trained(data: Dataset, **config: object) -> tuple[TrainingRun, dict]:
    spec = model_spec("mlp", data.input_shape, data.num_classes, **HPARAMS)
    model = gm.build_model("mlp", data.input_shape, data.num_classes, **HPARAMS)
    settings = {"lr": 0.05, "batch_size": 8, "max_epochs": 3, "target_ce": 1e-9} | config
    return train_to_target(model, data, TrainingConfig(**settings)), spec


@pytest.fixture
def data() -> Dataset:
    return make_blobs(m=30, classes=3)


@pytest.fixture
def saved(tmp_path: Path, data: Dataset) -> tuple[Path, TrainingRun, dict]:
    run, spec = trained(data)
    folder = save_run(tmp_path / "run", run, spec)
    return folder, run, spec


def test_save_run_writes_the_expected_files(saved: tuple[Path, TrainingRun, dict]) -> None:
    folder, _, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch1.safetensors",
        "final.safetensors",
        "init.safetensors",
        "model.json",
        "records.json",
    ]


def test_roundtrip_gives_identical_models_buffers_and_records(
    saved: tuple[Path, TrainingRun, dict], data: Dataset
) -> None:
    folder, run, spec = saved
    loaded = load_run(folder)
    assert isinstance(loaded, LoadedRun)
    assert loaded.spec == spec
    state = run.model.state_dict()
    assert any(key.endswith("running_var") for key in state)
    assert not torch.equal(
        state["bn1.running_mean"], run.init_model.state_dict()["bn1.running_mean"]
    )
    assert states_equal(loaded.model.state_dict(), state)
    assert states_equal(loaded.init_model.state_dict(), run.init_model.state_dict())
    assert not loaded.model.training and not loaded.init_model.training
    inputs = torch.cat([data.train[0], data.test[0]])
    with torch.no_grad():
        assert torch.equal(loaded.model(inputs), run.model(inputs))
        assert torch.equal(loaded.init_model(inputs), run.init_model(inputs))
    records = loaded.records
    assert states_equal(records["epoch1_state"], run.records["epoch1_state"])
    assert records["ce_checks"] == run.records["ce_checks"]
    for key in ("batch_size", "steps_per_epoch", "check_every", "check_batches", "ce_check"):
        assert records[key] == run.records[key]
    assert records["check_seed"] == run.records["check_seed"]
    assert records["config"] == run.records["config"]
    assert records["status"] == run.status
    assert records["metrics"] == run.metrics


def test_load_checkpoint_file_by_file(saved: tuple[Path, TrainingRun, dict]) -> None:
    folder, run, _ = saved
    loaded = load_checkpoint(folder / "final.safetensors", folder / "model.json")
    assert loaded.init_model is None and loaded.records is None
    assert states_equal(loaded.model.state_dict(), run.model.state_dict())
    with_init = load_checkpoint(
        folder / "final.safetensors", folder / "model.json", folder / "init.safetensors"
    )
    assert states_equal(with_init.init_model.state_dict(), run.init_model.state_dict())
    model = load_model(folder / "final.safetensors", read_spec(folder / "model.json"))
    assert states_equal(model.state_dict(), run.model.state_dict())


def test_no_pickle_is_written_or_read(
    saved: tuple[Path, TrainingRun, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _, _ = saved
    for path in folder.iterdir():
        raw = path.read_bytes()
        assert not raw.startswith(b"\x80"), f"{path.name} looks like a pickle"
        if path.suffix == ".json":
            json.loads(raw, parse_constant=reject_constant)
        else:
            assert path.suffix == ".safetensors"
            (size,) = struct.unpack("<Q", raw[:8])
            header = json.loads(raw[8 : 8 + size])
            assert all(
                key == "__metadata__" or set(value) == {"dtype", "shape", "data_offsets"}
                for key, value in header.items()
            )

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a checkpoint must not unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_run(folder)


def test_no_epoch1_file_without_an_epoch1_state(tmp_path: Path, data: Dataset) -> None:
    long_run, spec = trained(data)
    short_run, _ = trained(data, target_ce=100.0)  # done at t = 0
    assert short_run.records["epoch1_state"] is None
    folder = save_run(tmp_path / "run", long_run, spec)
    assert (folder / "epoch1.safetensors").is_file()
    save_run(folder, short_run, spec)  # overwriting removes the stale epoch-1 state
    assert not (folder / "epoch1.safetensors").exists()
    assert load_run(folder).records["epoch1_state"] is None


def test_non_finite_numbers_are_strict_json(tmp_path: Path, data: Dataset) -> None:
    spec = model_spec("mlp", data.input_shape, data.num_classes, depth=1, width=8)
    model = gm.build_model("mlp", data.input_shape, data.num_classes, depth=1, width=8)
    run = train_to_target(model, data, TrainingConfig(lr=1e6, batch_size=8, check_every=1))
    assert run.status == "diverged"
    assert not math.isfinite(run.records["ce_checks"][-1][1])
    assert not math.isfinite(run.metrics["train_ce"])
    folder = save_run(tmp_path / "run", run, spec)
    text = (folder / "records.json").read_text()
    json.loads(text, parse_constant=reject_constant)
    records = load_run(folder).records
    assert records["status"] == "diverged"
    assert math.isnan(records["ce_checks"][-1][1])
    assert records["ce_checks"][:-1] == run.records["ce_checks"][:-1]
    assert math.isnan(records["metrics"]["train_ce"])
    assert records["metrics"]["steps"] == run.metrics["steps"]


def test_no_temporary_files_are_left(saved: tuple[Path, TrainingRun, dict]) -> None:
    folder, _, _ = saved
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture
def files(saved: tuple[Path, TrainingRun, dict]) -> Path:
    return saved[0]


def test_missing_weights_file(files: Path) -> None:
    missing = files / "nope.safetensors"
    with pytest.raises(gm.ModelError, match=r"nope\.safetensors.*does not exist"):
        load_checkpoint(missing, files / "model.json")
    with pytest.raises(gm.ModelError, match=r"nope\.safetensors"):
        load_checkpoint(files / "final.safetensors", files / "model.json", missing)


def test_missing_spec_file(files: Path) -> None:
    with pytest.raises(gm.ModelError, match=r"nope\.json does not exist"):
        load_checkpoint(files / "final.safetensors", files / "nope.json")


def test_missing_run_folder(tmp_path: Path) -> None:
    with pytest.raises(gm.ModelError, match="absent"):
        load_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(gm.ModelError, match=r"model\.json"):
        load_run(tmp_path / "empty")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "missing"),
        ('{"name": "mlp", "input_shape": [2], "num_classes": 3}', "missing.*hparams"),
        ('{"name": "mlp", "input_shape": 2, "num_classes": 3, "hparams": {}}', "input_shape"),
        ('{"name": "mlp", "input_shape": [2], "num_classes": 3, "hparams": []}', "hparams"),
        ('{"name": "mlp", "input_shape": [2], "num_classes": true, "hparams": {}}', "num_classes"),
        ('{"name": "mlp", "input_shape": [2], "num_classes": 3, "hparams": {"x": 1}}', "'x'"),
        ('{"name": "nope", "input_shape": [2], "num_classes": 3, "hparams": {}}', "nope"),
    ],
)
def test_bad_spec_names_the_file(files: Path, text: str, message: str) -> None:
    spec = files / "bad.json"
    spec.write_text(text)
    with pytest.raises(gm.ModelError, match=rf"bad\.json.*{message}"):
        load_checkpoint(files / "final.safetensors", spec)


def test_weights_not_matching_the_spec_name_the_file(files: Path, data: Dataset) -> None:
    spec = read_spec(files / "model.json")
    wider = files / "wider.json"
    save_spec(wider, spec | {"hparams": spec["hparams"] | {"width": 13}})
    with pytest.raises(gm.ModelError, match=r"final\.safetensors does not match"):
        load_checkpoint(files / "final.safetensors", wider)
    no_bn = files / "no_bn.json"
    save_spec(no_bn, spec | {"hparams": spec["hparams"] | {"batchnorm": False}})
    with pytest.raises(gm.ModelError, match=r"final\.safetensors does not match"):
        load_checkpoint(files / "final.safetensors", no_bn)
    other = gm.build_model("mlp", data.input_shape, data.num_classes, depth=1, width=12)
    save_state(files / "other.safetensors", other.state_dict())
    with pytest.raises(gm.ModelError, match=r"other\.safetensors does not match"):
        load_checkpoint(
            files / "final.safetensors", files / "model.json", files / "other.safetensors"
        )


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[: len(raw) // 2],
        lambda raw: b"",
        lambda raw: b"not a safetensors file at all",
        lambda raw: raw[:8] + b"xx" + raw[10:],
        lambda raw: pickle.dumps({"a": 1}),
    ],
    ids=["truncated", "empty", "text", "bad-header", "pickle"],
)
def test_corrupt_safetensors_names_the_file(files: Path, corrupt) -> None:
    path = files / "final.safetensors"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(gm.ModelError, match=r"final\.safetensors is not a readable safetensors"):
        load_run(files)


def test_corrupt_records_name_the_file(files: Path) -> None:
    (files / "records.json").write_text("{")
    with pytest.raises(gm.ModelError, match=r"records\.json is not valid JSON"):
        load_run(files)
    (files / "records.json").write_text('{"ce_checks": [[0]]}')
    with pytest.raises(gm.ModelError, match=r"records\.json.*ce_checks"):
        load_run(files)


def test_corrupt_epoch1_file_names_the_file(files: Path) -> None:
    (files / "epoch1.safetensors").write_bytes(b"garbage")
    with pytest.raises(gm.ModelError, match=r"epoch1\.safetensors"):
        load_run(files)
