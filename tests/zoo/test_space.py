from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from genmeasures.data import Dataset
from genmeasures.errors import GenMeasuresError
from genmeasures.models import default_hparams
from genmeasures.zoo.space import (
    Config,
    Space,
    SpaceError,
    list_presets,
    load_space,
    setting_names,
    space_from_dict,
)
from genmeasures.zoo.train import TrainingConfig

PRESETS = (
    "smoke",
    "quick",
    "jiang2020-nin-cifar10",
    "jiang2020-nin-svhn",
    "jiang2020-nin-digits-cpu",
    "tsuzuku2020-random-labels",
    "tsuzuku2020-random-labels-cpu",
    "tsuzuku2020-regularization",
    "tsuzuku2020-regularization-cpu",
    "tsuzuku2020-width-depth",
    "tsuzuku2020-width-depth-cpu",
)


def small(**changes: Any) -> dict[str, Any]:
    """A valid space as a dict; ``changes`` update its sections (``None`` deletes a key)."""
    data: dict[str, Any] = {
        "description": "test space",
        "fixed": {"dataset": "digits", "model": "mlp", "depth": 1, "max_epochs": 5},
        "grid": {"width": [8, 16], "batch_size": [32, 64, 128]},
        "canonical": {},
    }
    for section, update in changes.items():
        for key, value in update.items():
            if value is None:
                data[section].pop(key, None)
            else:
                data[section][key] = value
    return data


def space(**changes: Any) -> Space:
    return space_from_dict(small(**changes), source="test-source")


# --- presets ---


def test_every_preset_is_packaged() -> None:
    assert set(PRESETS) <= set(list_presets())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_validates(name: str) -> None:
    preset = load_space(name)
    assert preset.name == name
    assert len(preset.description) > 40
    configs = preset.configs()
    assert len(configs) == len(preset) >= 1
    assert [c.index for c in configs] == list(range(len(configs)))
    assert len({c.hash for c in configs}) == len(configs), "configs must be distinct models"
    assert all(set(c.hparams) == set(preset.grid) for c in configs)
    assert Space.from_json(json.loads(json.dumps(preset.to_json(), sort_keys=True))) == preset


def test_smoke_is_small() -> None:
    smoke = load_space("smoke")
    assert len(smoke) <= 16
    assert 2 <= len(smoke.grid) <= 3
    assert smoke.fixed["dataset"] in ("mnist1d", "digits")
    assert all(c.model_hparams["width"] <= 32 for c in smoke.configs())


def test_quick_has_four_types_of_three_values() -> None:
    quick = load_space("quick")
    assert len(quick) >= 81
    assert len(quick.grid) == 4
    assert all(len(values) == 3 for values in quick.grid.values())
    assert quick.fixed["dataset"] == "mnist1d"
    assert all(c.training.target_ce == 0.01 for c in quick.configs())
    assert all(c.model_hparams["dropout"] == 0.0 for c in quick.configs())


def test_jiang_presets_follow_appendix_c3() -> None:
    for dataset in ("cifar10", "svhn"):
        preset = load_space(f"jiang2020-nin-{dataset}")
        assert preset.fixed["dataset"] == dataset
        assert preset.fixed["model"] == "nin"
        assert len(preset) == 3**7
        assert preset.grid["width"] == (192, 384, 768)
        assert preset.grid["depth"] == (2, 4, 8)
        assert preset.grid["dropout"] == (0.0, 0.25, 0.5)
        assert preset.grid["batch_size"] == (32, 64, 128)
        assert preset.grid["optimizer"] == ("sgd", "adam", "rmsprop")
        assert preset.grid["lr"]["sgd"] == (0.1, 0.032, 0.01)
        assert preset.grid["l2"]["rmsprop"] == (0.0, 0.0001, 0.0003)
        config = preset.configs()[0]
        assert config.training.lr_milestones == (60000, 90000)
        assert config.model_hparams["batchnorm"] is True


def test_the_cpu_nin_preset_varies_all_seven_types_of_appendix_c3() -> None:
    preset = load_space("jiang2020-nin-digits-cpu")
    types = {"depth", "width", "dropout", "batch_size", "optimizer", "lr", "l2"}
    assert set(preset.grid) == types
    assert len(preset) >= 128
    assert all(len(preset.grid[key]) >= 2 for key in types - {"lr", "l2"})
    assert preset.grid["optimizer"] == ("sgd", "adam", "rmsprop")
    for key in ("lr", "l2"):  # per-optimizer lists, as the paper's
        assert set(preset.grid[key]) == {"sgd", "adam", "rmsprop"}
        assert all(len(values) >= 2 for values in preset.grid[key].values())
    assert preset.fixed["dataset"] == "digits"
    assert preset.fixed["model"] == "nin"
    config = preset.configs()[0]
    assert config.model_hparams["batchnorm"] is True
    assert config.training.target_ce == 0.01
    assert preset.canonical["optimizer"] == ("sgd", "adam", "rmsprop")


def test_load_space_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'description = "mine"\n[fixed]\ndataset = "digits"\nmodel = "mlp"\n'
        "[grid]\nwidth = [4, 8]\n",
        encoding="utf-8",
    )
    loaded = load_space(path)
    assert loaded.name == "mine"
    assert loaded.source == str(path)
    assert len(loaded) == 2
    assert load_space(str(path)) == loaded


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(SpaceError, match=r"'quik'.*smoke.*Did you mean 'quick'"):
        load_space("quik")


def test_missing_file() -> None:
    with pytest.raises(SpaceError, match=r"nowhere\.toml"):
        load_space("nowhere.toml")


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('description = "x"\n[fixed]\ndataset "digits"\n', encoding="utf-8")
    with pytest.raises(SpaceError, match=r"broken\.toml: invalid TOML: .*line 3"):
        load_space(path)


# --- product order, configs ---------------------------------------------------------------------


def test_product_order_first_key_slowest() -> None:
    s = space()
    assert len(s) == 6
    points = [(c.hparams["width"], c.hparams["batch_size"]) for c in s.configs()]
    assert points == [(8, 32), (8, 64), (8, 128), (16, 32), (16, 64), (16, 128)]
    assert [c.index for c in s.configs()] == list(range(6))
    assert list(s.configs()[4].hparams) == ["width", "batch_size"]
    assert s.configs()[4].levels == {"width": 1, "batch_size": 1}


def test_grid_order_follows_the_source() -> None:
    s = space_from_dict(small() | {"grid": {"batch_size": [1, 2], "width": [3]}})
    assert list(s.grid) == ["batch_size", "width"]


def test_config_resolves_every_setting() -> None:
    config = space(
        fixed={"lr": 0.5, "seed": 7, "random_labels": 0.25, "train_size": 100}
    ).configs()[1]
    assert config.dataset == "digits"
    assert config.model == "mlp"
    expected_hparams = {k: v for k, v in default_hparams("mlp").items() if k != "seed"}
    assert config.model_hparams == expected_hparams | {"depth": 1, "width": 8}
    assert config.training == TrainingConfig(lr=0.5, batch_size=64, max_epochs=5, seed=7)
    assert config.seed == 7
    assert config.dataset_options == {
        "normalize": True,
        "train_size": 100,
        "test_size": None,
        "random_labels": 0.25,
        "data_seed": 0,
    }
    assert config.hparams == {"width": 8, "batch_size": 64}


def test_no_grid_gives_one_config() -> None:
    s = space_from_dict(small() | {"grid": {}})
    assert len(s) == 1
    assert s.configs()[0].hparams == {}


def test_every_training_field_is_a_setting() -> None:
    fields = {f.name for f in dataclasses.fields(TrainingConfig)} - {"seed"}
    assert fields <= set(setting_names("mlp"))
    assert set(default_hparams("nin")) - {"seed"} <= set(setting_names("nin"))


def test_generator_options_pass_through() -> None:
    s = space_from_dict(
        small(fixed={"dataset": "mnist1d", "dataset_options": {"num_samples": 600}})
    )
    config = s.configs()[0]
    assert config.generator_options == {"num_samples": 600, "seed": 42}
    assert s.fixed["dataset_options"] == {"num_samples": 600}


# --- per-optimizer values (Jiang et al. 2020, appendix C.3) --------------------------------------


def test_per_optimizer_grid_pairs_level_k_with_the_optimizer() -> None:
    s = space(
        grid={
            "width": None,
            "batch_size": None,
            "optimizer": ["sgd", "adam"],
            "lr": {"sgd": [0.1, 0.01], "adam": [1e-3, 1e-4]},
        }
    )
    assert len(s) == 4
    got = [
        (c.training.optimizer, c.training.lr, c.hparams["lr"], c.levels["lr"]) for c in s.configs()
    ]
    assert got == [
        ("sgd", 0.1, 0.1, 0),
        ("sgd", 0.01, 0.01, 1),
        ("adam", 1e-3, 1e-3, 0),
        ("adam", 1e-4, 1e-4, 1),
    ]


def test_per_optimizer_fixed_table() -> None:
    s = space(
        fixed={"l2": {"sgd": 1e-4, "adam": 0, "rmsprop": 3e-4}},
        grid={"width": None, "batch_size": None, "optimizer": ["sgd", "adam", "rmsprop"]},
    )
    assert [c.training.l2 for c in s.configs()] == [1e-4, 0.0, 3e-4]
    assert "l2" not in s.configs()[0].hparams


def test_per_optimizer_table_with_fixed_optimizer() -> None:
    s = space(fixed={"optimizer": "adam", "lr": {"adam": 0.002, "sgd": 0.1}})
    assert {c.training.lr for c in s.configs()} == {0.002}


# --- hashing ---


PINNED_SPACE = {
    "description": "pinned",
    "fixed": {"dataset": "digits", "model": "mlp", "depth": 1, "max_epochs": 5, "lr": 0.05},
    "grid": {"width": [8, 16], "seed": [3, 4]},
}
PINNED_JSON = (
    '{"dataset":"digits","dataset_options":{"data_seed":0,"normalize":true,"random_labels":0.0,'
    '"test_size":null,"train_size":null},"generator_options":{},"model":"mlp","model_hparams":'
    '{"batchnorm":false,"bias":true,"depth":1,"dropout":0.0,"width":8},"seed":3,"training":'
    '{"batch_size":64,"ce_check":"minibatch","check_batches":100,"check_every":100,"l2":0.0,'
    '"lr":0.05,"lr_milestones":[],"max_epochs":5,"optimizer":"sgd","seed":3,"target_ce":0.01,'
    '"weight_decay":0.0}}'
)


def test_config_hash_is_pinned() -> None:
    # Changing these literals orphans every stored study: only do it on purpose.
    config = space_from_dict(PINNED_SPACE).configs()[0]
    assert json.dumps(config._semantic(), sort_keys=True, separators=(",", ":")) == PINNED_JSON
    assert config.hash == hashlib.sha256(PINNED_JSON.encode()).hexdigest()[:16]
    assert config.hash == "bee5cff0ab42554f"


def test_space_hash_is_pinned() -> None:
    assert space_from_dict(PINNED_SPACE).hash == "e2de55f07ab13a52"


def test_hash_invariant_to_number_spelling_and_key_order() -> None:
    a = space(fixed={"lr": 1, "l2": 0, "dropout": 0})
    b = space(fixed={"lr": 1.0, "l2": 0.0, "dropout": 0.0})
    assert a.hash == b.hash
    assert [c.hash for c in a.configs()] == [c.hash for c in b.configs()]
    reordered = small()
    reordered["fixed"] = dict(reversed(list(reordered["fixed"].items())))
    assert space_from_dict(reordered).hash == space().hash
    assert space_from_dict(reordered).configs() == space().configs()


def test_hash_invariant_to_toml_spelling(tmp_path: Path) -> None:
    one = tmp_path / "one.toml"
    one.write_text(
        'description = "a"\n[fixed]\ndataset = "digits"\nmodel = "mlp"\nlr = 1\n'
        "random_labels = 0\n[grid]\nwidth = [4, 8]\n",
        encoding="utf-8",
    )
    two = tmp_path / "two.toml"
    two.write_text(
        'description = "b"\n[fixed]\nrandom_labels = 0.0\nlr = 1.0\nmodel = "mlp"\n'
        'dataset = "digits"\n[grid]\nwidth = [4, 8]\n',
        encoding="utf-8",
    )
    assert load_space(one).hash == load_space(two).hash
    assert [c.hash for c in load_space(one).configs()] == [
        c.hash for c in load_space(two).configs()
    ]


def test_direct_config_construction_normalizes_numbers() -> None:
    config = space(fixed={"lr": 1}).configs()[0]
    direct = Config(
        dataset="digits",
        dataset_options={"random_labels": 0},
        generator_options={},
        model="mlp",
        model_hparams={"depth": 1, "width": 8},
        training=TrainingConfig(lr=1, batch_size=32, max_epochs=5),
        seed=0,
    )
    assert direct.training.lr == 1.0 and isinstance(direct.training.lr, float)
    assert direct.hash == config.hash


def test_hash_counts_defaults_as_given() -> None:
    explicit = space(fixed={"normalize": True, "bias": True, "optimizer": "sgd"})
    assert explicit.hash == space().hash
    assert explicit.configs()[0].hash == space().configs()[0].hash


def test_config_hash_ignores_labels_but_not_content() -> None:
    config = space().configs()[2]
    relabelled = dataclasses.replace(config, hparams={}, levels={}, index=99)
    assert relabelled.hash == config.hash
    assert (
        dataclasses.replace(
            config, seed=1, training=dataclasses.replace(config.training, seed=1)
        ).hash
        != config.hash
    )
    assert space(fixed={"max_epochs": 6}).configs()[2].hash != config.hash


def test_space_hash_ignores_name_and_description() -> None:
    a = space_from_dict(small() | {"name": "a", "description": "one"})
    b = space_from_dict(small() | {"name": "b", "description": "two"})
    assert a.hash == b.hash
    assert a.differences(b) == []
    assert space(grid={"width": [16, 8]}).hash != space().hash


# --- JSON -----------------------------------------------------------------------------------------


def test_config_json_round_trip() -> None:
    s = space(
        fixed={"lr_milestones": [10, 20], "random_labels": 0.5},
        grid={"lr_milestones": None, "batch_size": None, "seed": [0, 1]},
    )
    for config in s.configs():
        text = json.dumps(config.to_json(), sort_keys=True)
        back = Config.from_json(json.loads(text))
        assert back == config
        assert back.hash == config.hash
        assert Config.from_json(text) == config
    milestones = space(grid={"width": None, "batch_size": None, "lr_milestones": [[], [5, 9]]})
    for config in milestones.configs():
        assert Config.from_json(json.dumps(config.to_json())) == config
        assert isinstance(config.training.lr_milestones, tuple)


def test_configs_pickle() -> None:
    config = space().configs()[0]
    assert pickle.loads(pickle.dumps(config)) == config


def test_config_checks_its_seed() -> None:
    config = space().configs()[0]
    with pytest.raises(SpaceError, match=r"training\.seed"):
        dataclasses.replace(config, seed=5)


def test_space_json_round_trip_keeps_grid_order() -> None:
    s = space(
        fixed={"depth": None},
        grid={"width": None, "batch_size": None, "seed": [1, 0], "depth": [2, 1]},
    )
    text = json.dumps(s.to_json(), sort_keys=True)
    back = Space.from_json(text)
    assert back == s
    assert list(back.grid) == ["seed", "depth"]
    assert back.hash == s.hash


def test_measures_list_round_trips_and_is_not_hashed() -> None:
    plain = space()
    listed = space_from_dict(
        {**small(), "measures": ["all", "!hessian-trace"]}, source="test-source"
    )
    assert plain.measures == ("all",)
    assert listed.measures == ("all", "!hessian-trace")
    assert listed.hash == plain.hash
    assert Space.from_json(json.dumps(listed.to_json())).measures == listed.measures
    assert load_space("quick").measures == ("all", "!hessian-trace", "!hessian-max-eig")


@pytest.mark.parametrize(
    ("measures", "message"),
    [
        ("all", r"test-source: measures expected a non-empty list"),
        ([], r"measures expected a non-empty list"),
        (["all", 3], r"measures expected a non-empty list"),
        (["all", "!nope"], r"test-source: measures: unknown measure 'nope'"),
    ],
)
def test_measures_list_is_validated(measures: Any, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        space_from_dict({**small(), "measures": measures}, source="test-source")


# --- validation errors ---

ERRORS = [
    ({"fixed": {"widht": 8}}, r"test-source: fixed\.widht .*Did you mean 'width'"),
    ({"grid": {"widht": [8]}}, r"grid\.widht .*Did you mean 'width'"),
    ({"grid": {"width": []}}, r"grid\.width expected a non-empty list"),
    ({"grid": {"width": 8}}, r"grid\.width expected a non-empty list.*received 8"),
    ({"grid": {"width": [8, True]}}, r"grid\.width\[1\] expected an integer >= 1, received True"),
    ({"grid": {"width": [8, 2.5]}}, r"grid\.width\[1\] .*received 2\.5"),
    (
        {"fixed": {"batch_size": 0}, "grid": {"batch_size": None}},
        r"fixed\.batch_size .*received 0",
    ),
    ({"fixed": {"random_labels": 1.5}}, r"fixed\.random_labels expected a number in \[0, 1\]"),
    ({"fixed": {"lr": -0.1}}, r"fixed\.lr expected a finite number > 0, received -0\.1"),
    ({"fixed": {"lr": "fast"}}, r"fixed\.lr .*received 'fast'"),
    ({"fixed": {"normalize": 1}}, r"fixed\.normalize expected true or false, received 1"),
    ({"fixed": {"optimizer": "adamw"}}, r"fixed\.optimizer expected one of 'sgd'.*'adamw'"),
    ({"grid": {"optimizer": ["sgd", "lbfgs"]}}, r"grid\.optimizer\[1\] .*'lbfgs'"),
    ({"fixed": {"dataset": "imagenet"}}, r"fixed\.dataset expected one of .*'imagenet'"),
    ({"fixed": {"model": "mpl"}}, r"fixed\.model .*'mpl'.*Did you mean 'mlp'"),
    ({"fixed": {"dataset": None}}, r"fixed\.dataset .*received None"),
    ({"grid": {"dataset": ["digits"]}}, r"grid\.dataset expected dataset in \[fixed\]"),
    ({"grid": {"model": ["mlp"]}}, r"grid\.model .*cannot be varied"),
    ({"fixed": {"width": 8}}, r"grid\.width .*not also in \[fixed\] \(fixed\.width = 8\)"),
    (
        {"grid": {"width": [8, 16, 8]}},
        r"grid\.width expected a list without duplicate.* 8 appears",
    ),
    ({"grid": {"lr": [1, 1.0]}}, r"grid\.lr expected a list without duplicate"),
    ({"grid": {"lr": {"sgd": [0.1], "adamw": [0.1]}}}, r"grid\.lr\.adamw .*Did you mean 'adam'"),
    (
        {"grid": {"optimizer": ["sgd", "adam"], "lr": {"sgd": [0.1, 0.2], "adam": [0.1]}}},
        r"grid\.lr expected lists of the same length .*sgd: 2, adam: 1",
    ),
    (
        {"grid": {"optimizer": ["sgd", "adam"], "lr": {"sgd": [0.1, 0.2]}}},
        r"grid\.lr expected a value for optimizer 'adam'.*grid\.optimizer.*received \{'sgd'",
    ),
    ({"fixed": {"l2": {"adam": 0.1}}}, r"fixed\.l2 expected a value for optimizer 'sgd'"),
    ({"fixed": {"lr": {"sgd": 0}}}, r"fixed\.lr\.sgd expected a finite number > 0, received 0"),
    ({"fixed": {"width": {"sgd": 3}}, "grid": {"width": None}}, r"fixed\.width .*received \{"),
    (
        {"fixed": {"lr_milestones": [5, 3]}},
        r"fixed\.lr_milestones expected a list of strictly increasing steps >= 1",
    ),
    ({"fixed": {"dropout": 1.0}}, r"fixed\.dropout expected a number in \[0, 1\)"),
    ({"fixed": {"seed": -1}}, r"fixed\.seed .*received -1"),
    ({"fixed": {"dataset_options": {"num_samples": 100}}}, r"dataset_options\.num_samples .*none"),
    ({"fixed": {"preact": True}}, r"fixed\.preact expected a setting of a space with model 'mlp'"),
    ({"canonical": {"widht": "increasing"}}, r"canonical\.widht .*Did you mean 'width'"),
    ({"canonical": {"width": "up"}}, r"canonical\.width expected one of 'increasing'.*'up'"),
    ({"canonical": {"optimizer": "increasing"}}, r"canonical\.optimizer .*not numeric"),
    ({"canonical": {"width": [16]}}, r"canonical\.width expected a list holding every value.* 8 "),
    ({"canonical": {"width": []}}, r"canonical\.width expected a non-empty list"),
]


@pytest.mark.parametrize(("changes", "message"), ERRORS)
def test_errors_name_the_key_and_value(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpaceError, match=message) as info:
        space(**changes)
    assert isinstance(info.value, GenMeasuresError)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("test-source: ")


def test_generator_option_types_are_checked() -> None:
    with pytest.raises(SpaceError, match=r"fixed\.dataset_options\.num_samples .*'many'"):
        space(fixed={"dataset": "mnist1d", "dataset_options": {"num_samples": "many"}})
    with pytest.raises(SpaceError, match=r"fixed\.dataset_options\.num_sample .*'num_samples'"):
        space(fixed={"dataset": "mnist1d", "dataset_options": {"num_sample": 100}})


def test_unknown_top_level_key() -> None:
    data = small() | {"grids": {}}
    with pytest.raises(SpaceError, match=r"grids .*Did you mean 'grid'"):
        space_from_dict(data, source="x")


def test_model_specific_keys() -> None:
    nin = space(fixed={"model": "nin", "dataset": "digits", "depth": 1}, grid={"width": [4]})
    assert nin.configs()[0].model_hparams == {
        "depth": 1,
        "width": 4,
        "dropout": 0.0,
        "batchnorm": True,
    }


# --- canonical orders (Jiang et al. 2020, appendix C.4) -------------------------------------------


def test_default_canonical_ranks() -> None:
    s = space()
    assert s.canonical_rank("batch_size", 128) > s.canonical_rank("batch_size", 32)
    assert s.canonical_rank("width", 16) < s.canonical_rank("width", 8)
    assert s.canonical_rank("lr", 0.1) < s.canonical_rank("lr", 0.01)
    assert s.canonical_rank("optimizer", "sgd") < s.canonical_rank("optimizer", "adam")
    assert s.canonical_rank("optimizer", "adam") < s.canonical_rank("optimizer", "rmsprop")
    assert s.canonical_rank("random_labels", 1.0) > s.canonical_rank("random_labels", 0)
    assert s.canonical_rank("train_size", 1000) < s.canonical_rank("train_size", 100)
    assert s.canonical_rank("seed", 3) is None
    assert s.canonical_rank("data_seed", 0) is None
    assert s.canonical_rank("lr_milestones", [3]) is None


def test_canonical_overrides() -> None:
    s = space(
        canonical={"width": "increasing", "depth": "none", "batch_size": [128, 32, 64]},
    )
    assert s.canonical_rank("width", 16) > s.canonical_rank("width", 8)
    assert s.canonical_rank("depth", 3) is None
    assert [s.canonical_rank("batch_size", b) for b in (32, 64, 128)] == [1.0, 2.0, 0.0]
    assert s.canonical["batch_size"] == (128, 32, 64)


def test_canonical_rank_errors() -> None:
    s = space(canonical={"batch_size": [32, 64, 128]})
    with pytest.raises(
        SpaceError,
        match=r"canonical_rank\('batch_size'\) expected one of the canonical values \[32, 64, "
        r"128\], received 16\.",
    ):
        s.canonical_rank("batch_size", 16)
    with pytest.raises(SpaceError, match=r"canonical_rank\('widht'\).*Did you mean 'width'"):
        s.canonical_rank("widht", 8)
    with pytest.raises(SpaceError, match=r"canonical_rank\('width'\) expected .*received 'x'"):
        s.canonical_rank("width", "x")


# --- differences ---


def test_differences_name_the_keys() -> None:
    a = space()
    b = space(fixed={"depth": 2, "lr": 0.5}, grid={"width": [8, 32]}, canonical={"width": "none"})
    lines = a.differences(b)
    assert "fixed.depth: 1 here, 2 in the other space" in lines
    assert "fixed.lr: 0.01 here, 0.5 in the other space" in lines
    assert "grid.width: [8, 16] here, [8, 32] in the other space" in lines
    assert 'canonical.width: "decreasing" here, "none" in the other space' in lines
    assert len(lines) == 4
    assert a.differences(copy.deepcopy(a)) == []


def test_differences_when_a_key_moves_between_fixed_and_grid() -> None:
    a = space()
    b = space_from_dict(
        small(fixed={"width": 8, "depth": None}, grid={"width": None, "depth": [1, 2]})
    )
    lines = a.differences(b)
    assert any(line.startswith("fixed.width: absent here, 8") for line in lines)
    assert any(line.startswith("grid.width: [8, 16] here, absent") for line in lines)
    reordered = space_from_dict(small() | {"grid": {"batch_size": [32, 64, 128], "width": [8, 16]}})
    assert any(line.startswith("grid order") for line in a.differences(reordered))


# --- data and model ---


def test_smoke_config_loads_data_and_builds_the_model() -> None:
    config = load_space("smoke").configs()[0]
    data = config.load_dataset()
    assert isinstance(data, Dataset)
    assert data.name == config.dataset
    model = config.build_model(data)
    out = model(data.train[0][:4])
    assert out.shape == (4, data.num_classes)
    again = config.build_model(data)
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_data_seed_seeds_labels_and_subsets() -> None:
    s = space_from_dict(
        small(fixed={"random_labels": 0.5, "train_size": 200})
        | {"grid": {"data_seed": [0, 1], "width": [8, 16]}}
    )
    configs = s.configs()
    a, a_again, b = configs[0].load_dataset(), configs[0].load_dataset(), configs[-1].load_dataset()
    assert torch.equal(a.train[1], a_again.train[1])
    assert len(a.train[1]) == 200
    assert not torch.equal(a.train[0], b.train[0])
    assert configs[0].data_hash == configs[1].data_hash
    assert configs[0].data_hash != configs[-1].data_hash
