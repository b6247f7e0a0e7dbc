"""Reading spaces: packaged presets, TOML files and dicts, checked into a :class:`Space`.

Spaces are read from TOML, either a packaged preset (:func:`list_presets`) or a user's file (see
the package docstring for the format); :func:`space_from_dict` checks the document's structure
and every value, naming the source, the key as written (``grid.width[1]``) and the value.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genmeasures.data import list_datasets
from genmeasures.errors import MeasureError, SpaceError
from genmeasures.measures.registry import resolve_measures
from genmeasures.models import list_models
from genmeasures.names import preset_names, presets_folder
from genmeasures.validation import Declared
from genmeasures.zoo.space.canonical import read_canonical
from genmeasures.zoo.space.checks import close, fail, parse, parse_list, show
from genmeasures.zoo.space.grid import Space
from genmeasures.zoo.space.memory import check_memory
from genmeasures.zoo.space.settings import (
    FIXED_ONLY,
    PER_OPTIMIZER,
    all_settings,
    parse_generator_options,
)
from genmeasures.zoo.train import OPTIMIZERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["list_presets", "load_space", "read_space", "space_from_dict"]

_SECTIONS = ("fixed", "grid", "canonical")
_TOP_LEVEL = ("name", "description", "measures", *_SECTIONS)


def space_from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", name: str | None = None
) -> Space:
    """Validate a space given as a dict (the TOML document's structure) and build it.

    Besides every value, the configurations' models are checked to fit in this machine's memory
    (:func:`~genmeasures.zoo.space.memory.check_memory`), before any is trained.

    Args:
        data: ``{"description": str, "fixed": {...}, "grid": {...}, "canonical": {...}}``, and
            optionally ``"name"``; ``fixed`` must hold ``dataset`` and ``model``.
        source: Named in error messages (preset name or file path).
        name: The space's name when ``data`` has none (default ``"unnamed"``).

    Returns:
        The validated space.

    Raises:
        SpaceError: Naming the source, the key and the value, for an unknown key (with close
            matches), an empty list, a value of the wrong type or out of range, an unknown
            optimizer, dataset or model, a per-optimizer table with an unknown optimizer, lists of
            unequal length or a missing optimizer, a key both fixed and varied, duplicate values,
            an invalid ``[canonical]`` entry, or a configuration whose model cannot be built for
            the dataset or cannot be trained in this machine's memory (naming how much it needs
            and how much there is).
    """
    space = read_space(data, source=source, name=name)
    check_memory(space)
    return space


def read_space(data: Mapping[str, Any], *, source: str, name: str | None = None) -> Space:
    """:func:`space_from_dict` without the memory check: how a stored study's space is read back.

    A study trained on a large machine can so be opened on a small one.
    """
    if not isinstance(data, Mapping):
        fail(source, "space", data, "a table with description, fixed, grid and canonical")
    space_name, description, measures = _header(data, source, name)
    fixed_in, grid_in, canonical_in = (_section(data, source, key) for key in _SECTIONS)
    model = _checked_model(source, fixed_in, grid_in)
    settings = all_settings(model)
    known = [*FIXED_ONLY, *settings]
    for section, table in (("fixed", fixed_in), ("grid", grid_in)):
        for key, value in table.items():
            if key not in known:
                fail(
                    source,
                    f"{section}.{key}",
                    value,
                    f"a setting of a space with model {model!r}: {', '.join(known)}",
                    close(key, known),
                )
    fixed = _read_fixed(source, fixed_in, grid_in, settings)
    grid = {
        key: (
            _per_optimizer(source, f"grid.{key}", values, settings[key], grid=True)
            if key in PER_OPTIMIZER and isinstance(values, Mapping)
            else parse_list(source, f"grid.{key}", values, settings[key])
        )
        for key, values in grid_in.items()
    }
    _check_every_optimizer_has_its_value(source, fixed, grid, settings)
    return Space(
        name=space_name,
        description=description,
        fixed=fixed,
        grid=grid,
        canonical=read_canonical(source, canonical_in, settings, grid),
        measures=measures,
        source=source,
    )


def _header(
    data: Mapping[str, Any], source: str, name: str | None
) -> tuple[str, str, tuple[str, ...]]:
    """The top-level keys checked: the space's name, description and measures list."""
    for key, value in data.items():
        if key not in _TOP_LEVEL:
            fail(
                source,
                key,
                value,
                f"one of the top-level keys {', '.join(_TOP_LEVEL)}",
                close(str(key), _TOP_LEVEL),
            )
    space_name = data.get("name", name if name is not None else "unnamed")
    if not isinstance(space_name, str) or not space_name:
        fail(source, "name", space_name, "a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        fail(source, "description", description, "a string")
    measures = data.get("measures", ["all"])
    if (
        not isinstance(measures, list | tuple)
        or not measures
        or not all(isinstance(item, str) for item in measures)
    ):
        fail(source, "measures", measures, "a non-empty list of measure names or patterns")
    try:
        resolve_measures(measures)
    except MeasureError as error:
        raise SpaceError(f"{source}: measures: {error}") from None
    return space_name, description, tuple(measures)


def _section(data: Mapping[str, Any], source: str, section: str) -> dict[str, Any]:
    value = data.get(section, {})
    if not isinstance(value, Mapping):
        fail(source, section, value, f"a table [{section}]")
    return dict(value)


def _checked_model(source: str, fixed_in: Mapping[str, Any], grid_in: Mapping[str, Any]) -> str:
    """Check the fixed dataset and model, which every other setting depends on; the model."""
    for key in FIXED_ONLY:
        if key in grid_in:
            fail(
                source,
                f"grid.{key}",
                grid_in[key],
                f"{key} in [fixed] (it cannot be varied: one {key} per space)",
            )
    dataset, model = fixed_in.get("dataset"), fixed_in.get("model")
    for key, value, names in (
        ("dataset", dataset, list_datasets()),
        ("model", model, list_models()),
    ):
        if value not in names:
            fail(
                source,
                f"fixed.{key}",
                value,
                f"one of {', '.join(names)}",
                close(str(value), names) if isinstance(value, str) else "",
            )
    return fixed_in["model"]


def _read_fixed(
    source: str,
    fixed_in: Mapping[str, Any],
    grid_in: Mapping[str, Any],
    settings: Mapping[str, Declared],
) -> dict[str, Any]:
    dataset = fixed_in["dataset"]
    fixed: dict[str, Any] = {"dataset": dataset, "model": fixed_in["model"]}
    for key, value in fixed_in.items():
        if key in ("dataset", "model"):
            continue
        if key == "dataset_options":
            parsed = parse_generator_options(source, "fixed.dataset_options", dataset, value)
            fixed[key] = {option: parsed[option] for option in value}
        elif key in grid_in:
            fail(
                source,
                f"grid.{key}",
                grid_in[key],
                f"a setting that is not also in [fixed] (fixed.{key} = {show(value)}); a "
                "setting is either fixed or varied, not both",
            )
        elif key in PER_OPTIMIZER and isinstance(value, Mapping):
            fixed[key] = _per_optimizer(source, f"fixed.{key}", value, settings[key], grid=False)
        else:
            fixed[key] = parse(source, f"fixed.{key}", value, settings[key])
    return fixed


def _check_every_optimizer_has_its_value(
    source: str,
    fixed: Mapping[str, Any],
    grid: Mapping[str, Any],
    settings: Mapping[str, Declared],
) -> None:
    """A per-optimizer table names every optimizer the configurations use."""
    optimizers = grid.get("optimizer", (fixed.get("optimizer", settings["optimizer"].default),))
    where = "grid.optimizer" if "optimizer" in grid else "fixed.optimizer"
    for section, table in (("fixed", fixed), ("grid", grid)):
        for key in PER_OPTIMIZER:
            missing = [
                optimizer
                for optimizer in optimizers
                if isinstance(table.get(key), dict) and optimizer not in table[key]
            ]
            if missing:
                fail(
                    source,
                    f"{section}.{key}",
                    table[key],
                    f"a value for optimizer {missing[0]!r}, which the configurations "
                    f"use ({where}); give one for each of {', '.join(optimizers)}",
                )


def _per_optimizer(
    source: str, key: str, table: Mapping[str, Any], setting: Declared, *, grid: bool
) -> dict[str, Any]:
    """A per-optimizer table (Jiang et al. 2020, appendix C.3): optimizer → value or list."""
    if not table:
        fail(source, key, {}, f"a value per optimizer ({', '.join(OPTIMIZERS)})")
    result: dict[str, Any] = {}
    for optimizer, value in table.items():
        if optimizer not in OPTIMIZERS:
            fail(
                source,
                f"{key}.{optimizer}",
                value,
                f"a known optimizer as key: one of {', '.join(OPTIMIZERS)}",
                close(str(optimizer), OPTIMIZERS),
            )
        item = f"{key}.{optimizer}"
        result[optimizer] = (
            parse_list(source, item, value, setting)
            if grid
            else parse(source, item, value, setting)
        )
    if grid:
        lengths = {opt: len(vals) for opt, vals in result.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{opt}: {n}" for opt, n in lengths.items())
            fail(
                source,
                key,
                table,
                "lists of the same length for every optimizer (entry k of each list is level "
                f"k), got lengths {shown}",
            )
    return result


def list_presets() -> list[str]:
    """Return the names of the packaged presets (``genmeasures/presets/*.toml``), sorted."""
    return preset_names()


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{source}: invalid TOML: {exc}") from None


def load_space(name_or_path: str | os.PathLike[str]) -> Space:
    """Load a space: a packaged preset by name, or a TOML file by path.

    A string is read as a path when it ends in ``.toml``, contains a path separator, or names an
    existing file that is not a preset name.

    Args:
        name_or_path: A name from :func:`list_presets` or the path of a ``.toml`` file.

    Returns:
        The validated space. Its name is the preset's name, else the file's ``name`` key, else
        the file's stem.

    Raises:
        SpaceError: For an unknown preset (listing the presets), a missing or unreadable file, a
            file that is not UTF-8 (naming the byte offset), a TOML syntax error (naming the file
            and line) or an invalid space.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        fail("load_space", "name_or_path", repr(name_or_path), "a preset name or a file path")
    text = os.fspath(name_or_path)
    presets = list_presets()
    is_path = (
        isinstance(name_or_path, os.PathLike)
        or text.endswith(".toml")
        or "/" in text
        or os.sep in text
        or (text not in presets and Path(text).is_file())
    )
    if not is_path:
        if text not in presets:
            raise SpaceError(
                f"{text!r}: expected a preset name ({', '.join(presets)}) or the path of a .toml "
                f"file; no preset or file has this name.{close(text, presets)}"
            )
        source = f"preset {text!r}"
        content = presets_folder().joinpath(f"{text}.toml").read_text(encoding="utf-8")
        data = _read_toml(content, source)
        return space_from_dict(data, source=source, name=data.get("name", text))
    path = Path(text)
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(
            f"{path}: expected a readable .toml file describing a space, could not read it "
            f"({exc.strerror or exc}). Presets: {', '.join(presets)}."
        ) from None
    except UnicodeDecodeError as exc:
        raise SpaceError(
            f"{path}: expected UTF-8 text (a TOML file describing a space), received a byte "
            f"{exc.object[exc.start : exc.start + 1]!r} at byte offset {exc.start} that is not "
            "UTF-8; save the file as UTF-8"
        ) from None
    data = _read_toml(content, str(path))
    return space_from_dict(data, source=str(path), name=path.stem)
