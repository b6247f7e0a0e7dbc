"""A study folder: SQLite for configs, results and measure values; safetensors for weights.

Layout (``ARCHITECTURE.md``, "Store")::

    <study>/zoo.sqlite                tables meta, models, measures (schema: zoo/schema.py)
    <study>/checkpoints/<hash>/       init/final/epoch1.safetensors, records.json, model.json
    <study>/.lock                     held (flock) by the one process training the study
    <study>/.create-lock              held (flock) while a process creates or opens the study

A model row moves ``pending → running → done | not-converged | diverged | failed``
(:class:`~genmeasures.zoo.states.ModelState`). Every write
is one SQLite transaction, every checkpoint file is written under a temporary name and renamed,
and a result row is committed only after its files are complete, together with their SHA-256
digests. A process killed at any moment therefore leaves at most some ``running`` rows (reset to
``pending`` by the next run, which holds the lock and so knows they are stale) and possibly
orphaned files that the retry overwrites. Opening a study reads JSON, SQLite and safetensors:
nothing is unpickled. Opening checks the database's schema version and migrates a study made by
an older genmeasures in place (:mod:`genmeasures.zoo.schema`); a study whose writer was killed
mid-transaction is rolled back by the open, or, without write access, read from a rolled-back
copy (:mod:`genmeasures.zoo.opening`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from genmeasures.errors import CorruptCheckpointError, GenMeasuresWarning, StudyError
from genmeasures.measures import MeasureResult
from genmeasures.measures.registry import params_key
from genmeasures.zoo import locking
from genmeasures.zoo.checkpoint import (
    EPOCH1_FILE,
    FINAL_FILE,
    INIT_FILE,
    RECORDS_FILE,
    SPEC_FILE,
    LoadedRun,
    load_run,
    write_run,
)
from genmeasures.zoo.opening import migrated, open_database
from genmeasures.zoo.schema import METRICS, check_schema, create_schema
from genmeasures.zoo.space import Config, Space, canonical_json
from genmeasures.zoo.states import ModelState
from genmeasures.zoo.tables import (
    long_measures,
    study_table,
    unconverged_reasons,
    unconverged_values,
    write_table,
)
from genmeasures.zoo.versions import current_versions

DATABASE_FILE = "zoo.sqlite"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
CREATE_LOCK_FILE = ".create-lock"

#: Every state, and those a resumed study does not train again (``failed`` only on request).
STATES = tuple(ModelState)
FINISHED = tuple(state for state in ModelState if state.is_finished)
CHECKPOINT_FILES = (FINAL_FILE, INIT_FILE, EPOCH1_FILE, RECORDS_FILE, SPEC_FILE)


@dataclass
class ModelResult:
    """What training one config produced: everything the driver writes for one model row.

    Attributes:
        hash: The config's hash.
        status: ``done``, ``not-converged``, ``diverged`` or ``failed``.
        metrics: Final train/test cross-entropy and 0-1 error, gap, steps and seconds.
        records: Training records (``MEASURES.md`` §2.5) including ``epoch1_state``.
        final_state: Trained parameters and buffers (None when failed).
        init_state: Initial parameters and buffers (None when failed).
        spec: The model spec (:func:`genmeasures.zoo.checkpoint.model_spec`).
        measures: Measures computed with the training (the optimization-based ones).
        error: The traceback of a failed run.
    """

    hash: str
    status: ModelState
    metrics: dict[str, float] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    final_state: dict[str, torch.Tensor] | None = None
    init_state: dict[str, torch.Tensor] | None = None
    spec: dict[str, Any] | None = None
    measures: list[MeasureResult] = field(default_factory=list)
    error: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _real(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """Non-finite floats become None so that the value can be stored as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return repr(value)


class Zoo:
    """A study folder: its space, model rows, checkpoints and measure values.

    ``Zoo(path)`` opens an existing study; :meth:`create` makes one (or reopens it when the
    folder already holds a study of the same space).

    Example:
        >>> zoo = Zoo("runs/quick")  # doctest: +SKIP
        >>> zoo.table().groupby("status").size()  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        database = self.path / DATABASE_FILE
        if not database.is_file():
            raise StudyError(
                f"{self.path} is not a study folder (no {DATABASE_FILE}); create one with "
                "`genmeasures train --preset NAME --out DIR`"
            )
        try:
            self._connection = open_database(database, self._connect)
            check_schema(self._connection, database)
            stored = self._meta("space")
        except sqlite3.DatabaseError as error:
            raise StudyError(f"{database} is not a readable study database: {error}") from error
        if stored is None:
            raise StudyError(f"{database} has no space: it was not made by genmeasures")
        self._connection = migrated(self._connection, database)
        self.space = Space.from_json(json.loads(stored))

    @classmethod
    def create(cls, path: str | os.PathLike, space: Space) -> Zoo:
        """Create a study of ``space`` in ``path``, or reopen it if it is already there.

        Safe against concurrent creators: they take turns under the folder's creation lock, so
        one builds the database and the others open it.

        Args:
            path: The study folder (created with its parents if needed).
            space: The hyperparameter space; one ``pending`` row per config is added.

        Returns:
            The study.

        Raises:
            StudyError: if the folder cannot be written, or holds a study of another space
                (the message lists the differences).
        """
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / CHECKPOINT_DIR).mkdir(exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StudyError(f"cannot write the study folder {path}: {error.strerror}") from error
        with locking.waiting(path / CREATE_LOCK_FILE):
            return cls._create_locked(path, space)

    @classmethod
    def _create_locked(cls, path: Path, space: Space) -> Zoo:
        database = path / DATABASE_FILE
        if database.is_file():
            zoo = cls(path)
            if zoo.space.hash != space.hash:
                differences = "\n  ".join(zoo.space.differences(space)) or "(content)"
                raise StudyError(
                    f"{path} holds a study of another space ({zoo.space.name!r}); refusing to "
                    f"mix populations. Differences:\n  {differences}\n"
                    "Use another --out folder, or the study's own space."
                )
            return zoo
        # Built under a temporary name and renamed: a kill during creation leaves no half study.
        temporary = database.with_name(f".{DATABASE_FILE}.tmp-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        connection = cls._connect(temporary)
        with connection:
            create_schema(connection)
            connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("space", canonical_json(space.to_json())),
                    ("space_hash", space.hash),
                    ("created", str(time.time())),
                    ("genmeasures_version", _version()),
                ],
            )
            connection.executemany(
                "INSERT OR IGNORE INTO models (hash, idx, config, hparams, status, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        config.hash,
                        config.index,
                        canonical_json(config.to_json()),
                        canonical_json(config.hparams),
                        ModelState.PENDING,
                        time.time(),
                    )
                    for config in space.configs()
                ],
            )
        connection.close()
        os.replace(temporary, database)
        return cls(path)

    @staticmethod
    def _connect(database: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(database, timeout=60)
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction; a study that cannot be written is a :class:`StudyError`."""
        try:
            with self._connection:
                yield
        except sqlite3.OperationalError as error:
            raise StudyError(
                f"cannot write to the study {self.path}: {error}; a command that stores results "
                "needs write access to the study folder and its database"
            ) from error

    def _meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        """Close the database connection."""
        self._connection.close()

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return f"Zoo({str(self.path)!r}, space={self.space.name!r}: {counts})"

    # ------------------------------------------------------------------ training state

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the study's training lock; rows left ``running`` are stale once it is held.

        Raises:
            StudyError: if another live process holds it (the message gives its pid).
        """
        return locking.refusing(self.path / LOCK_FILE, self.path)

    def reset_stale(self) -> int:
        """Return rows left ``running`` by a dead process to ``pending``; call under :meth:`lock`.

        Returns:
            How many rows were reset.
        """
        with self._writing():
            cursor = self._connection.execute(
                "UPDATE models SET status = ?, updated = ? WHERE status = ?",
                (ModelState.PENDING, time.time(), ModelState.RUNNING),
            )
        return cursor.rowcount

    def remove_temporary_files(self) -> int:
        """Delete files a killed writer left under a temporary name; call under :meth:`lock`.

        A file whose writer (the pid in its name) is alive is kept: it may be another
        process's database being built, e.g. by a genmeasures older than the creation lock.

        Returns:
            How many were removed.
        """
        leftovers = [
            p
            for p in self.path.rglob(".*.tmp-*")
            if p.is_file() and not locking.written_by_live_process(p)
        ]
        for path in leftovers:
            path.unlink()
        return len(leftovers)

    def counts(self) -> dict[ModelState, int]:
        """Number of models in each state, every state listed, in the order of the enum."""
        rows = self._connection.execute("SELECT status, COUNT(*) FROM models GROUP BY status")
        counts = dict.fromkeys(ModelState, 0)
        counts.update((ModelState(status), n) for status, n in rows.fetchall())
        return counts

    def configs(self, states: Iterable[ModelState] | None = None) -> list[Config]:
        """The configs whose row is in one of ``states`` (all when None), in grid order."""
        query = "SELECT config FROM models"
        args: tuple[ModelState, ...] = ()
        if states is not None:
            args = tuple(states)
            query += f" WHERE status IN ({', '.join('?' for _ in args)})"
        rows = self._connection.execute(query + " ORDER BY idx", args).fetchall()
        return [Config.from_json(json.loads(config)) for (config,) in rows]

    def to_train(self, *, retry_failed: bool = False) -> list[Config]:
        """The configs a run must train: ``pending`` (and ``failed`` when asked)."""
        pending = ModelState.PENDING
        return self.configs((pending, ModelState.FAILED) if retry_failed else (pending,))

    def mark_running(self, hashes: Iterable[str]) -> None:
        """Mark models as being trained (one transaction)."""
        now = time.time()
        with self._writing():
            self._connection.executemany(
                "UPDATE models SET status = ?, attempts = attempts + 1, updated = ? WHERE hash = ?",
                [(ModelState.RUNNING, now, h) for h in hashes],
            )

    def error(self, model_hash: str) -> str | None:
        """The last line of a failed model's traceback (None if it has none)."""
        row = self._connection.execute(
            "SELECT error FROM models WHERE hash = ?", (model_hash,)
        ).fetchone()
        if row is None or not row[0]:
            return None
        return row[0].strip().splitlines()[-1]

    def checkpoint_dir(self, model_hash: str) -> Path:
        """The folder of one model's checkpoint files."""
        return self.path / CHECKPOINT_DIR / model_hash

    def record(self, result: ModelResult) -> None:
        """Write one trained model: checkpoint files first, then its row and measures at once.

        Args:
            result: A worker's result.
        """
        folder = self.checkpoint_dir(result.hash)
        digests = None
        if result.final_state is not None and result.init_state is not None:
            write_run(
                folder,
                final_state=result.final_state,
                init_state=result.init_state,
                records=result.records,
                status=result.status,
                metrics=result.metrics,
                spec=result.spec or {},
            )
            digests = {
                name: _sha256(folder / name)
                for name in CHECKPOINT_FILES
                if (folder / name).is_file()
            }
        records = {k: v for k, v in result.records.items() if k != "epoch1_state"}
        metrics = [_real(result.metrics.get(name)) for name in METRICS]
        with self._writing():
            self._connection.execute(
                f"UPDATE models SET status = ?, {', '.join(f'{m} = ?' for m in METRICS)}, "
                "records = ?, checkpoints = ?, error = ?, updated = ? WHERE hash = ?",
                (
                    result.status,
                    *metrics,
                    canonical_json(json_safe(records)),
                    None if digests is None else canonical_json(digests),
                    result.error,
                    time.time(),
                    result.hash,
                ),
            )
            self._insert_measures(result.hash, result.measures)

    # ------------------------------------------------------------------ checkpoints

    def _digests(self, model_hash: str) -> dict[str, str]:
        row = self._connection.execute(
            "SELECT status, checkpoints FROM models WHERE hash = ?", (model_hash,)
        ).fetchone()
        if row is None:
            raise StudyError(f"study {self.path} has no model {model_hash!r}")
        status, digests = row
        if digests is None:
            raise StudyError(
                f"model {model_hash} of study {self.path} has no checkpoint ({status})"
            )
        return json.loads(digests)

    def verify(self, model_hash: str) -> None:
        """Check a model's checkpoint files against the digests recorded with its row.

        Raises:
            CorruptCheckpointError: naming the file that is missing or altered.
        """
        folder = self.checkpoint_dir(model_hash)
        for name, expected in self._digests(model_hash).items():
            path = folder / name
            if not path.is_file():
                raise CorruptCheckpointError(f"checkpoint file {path} is missing")
            if _sha256(path) != expected:
                raise CorruptCheckpointError(
                    f"checkpoint file {path} does not match the digest recorded for it"
                )

    def invalidate(self, model_hash: str, reason: str) -> None:
        """Send a model back to ``pending`` (its measures dropped) and warn why."""
        warnings.warn(
            f"model {model_hash} of study {self.path}: {reason}; it will be retrained by the "
            "next `genmeasures train` of this study",
            GenMeasuresWarning,
            stacklevel=2,
        )
        with self._writing():
            self._connection.execute("DELETE FROM measures WHERE model = ?", (model_hash,))
            self._connection.execute(
                "UPDATE models SET status = ?, checkpoints = NULL, updated = ? WHERE hash = ?",
                (ModelState.PENDING, time.time(), model_hash),
            )

    def verify_all(self) -> list[str]:
        """Verify every finished model's checkpoint; invalidate (with a warning) those that fail.

        Returns:
            The hashes of the invalidated models.
        """
        rows = self._connection.execute(
            "SELECT hash FROM models WHERE checkpoints IS NOT NULL ORDER BY idx"
        ).fetchall()
        invalid = []
        for (model_hash,) in rows:
            try:
                self.verify(model_hash)
            except CorruptCheckpointError as error:
                self.invalidate(model_hash, str(error))
                invalid.append(model_hash)
        return invalid

    def load(self, model_hash: str) -> LoadedRun:
        """Load a model's trained and initial weights, spec and records, after verifying them.

        Raises:
            CorruptCheckpointError: if a file does not match its digest; the model is then
                sent back to ``pending`` with a warning.
        """
        return load_run(self.verified_checkpoint_dir(model_hash))

    def verified_checkpoint_dir(self, model_hash: str) -> Path:
        """A model's checkpoint folder, its files verified against their digests.

        Raises:
            CorruptCheckpointError: if a file does not match its digest; the model is then
                sent back to ``pending`` with a warning.
        """
        try:
            self.verify(model_hash)
        except CorruptCheckpointError as error:
            self.invalidate(model_hash, str(error))
            raise
        return self.checkpoint_dir(model_hash)

    # ------------------------------------------------------------------ measures

    def stored_measures(self, model_hash: str) -> dict[tuple[str, str], int | None]:
        """``(name, canonical params JSON)`` → measure version of a model's stored values.

        The version is None for a value stored before measures had versions (stale).
        """
        rows = self._connection.execute(
            "SELECT name, params, measure_version FROM measures WHERE model = ?", (model_hash,)
        )
        return {(name, params): version for name, params, version in rows.fetchall()}

    def record_measures(self, model_hash: str, results: Iterable[MeasureResult]) -> None:
        """Store measure values of one model in one transaction.

        A value with the same model, name and parameters is replaced.
        """
        with self._writing():
            self._insert_measures(model_hash, results)

    def _insert_measures(self, model_hash: str, results: Iterable[MeasureResult]) -> None:
        version, measure_versions = _version(), current_versions()
        self._connection.executemany(
            "INSERT OR REPLACE INTO measures (model, name, params, value, log_value, converged, "
            "seconds, status, message, extra, version, measure_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    model_hash,
                    r.name,
                    params_key(r.params),
                    _real(r.value),
                    _real(r.log_value),
                    int(r.converged),
                    r.seconds,
                    r.status,
                    r.message,
                    canonical_json(json_safe(r.extra)) if r.extra else None,
                    version,
                    measure_versions[r.name],
                )
                for r in results
            ],
        )

    # ------------------------------------------------------------------ tables

    def table(self, *, measures: bool = True) -> pd.DataFrame:
        """One row per model: hash, status, hyperparameters, metrics and measure values.

        Args:
            measures: Add one column per stored measure name (the most recently stored value
                when a measure was computed with several parameter sets).

        Returns:
            A DataFrame indexed by config hash, in grid order
            (:func:`~genmeasures.zoo.tables.study_table`). Hyperparameter columns carry the
            grid's names (``lr``, ``width``, ...); metrics are ``train_ce``, ``train_error``,
            ``test_ce``, ``test_error``, ``gap``, ``steps``, ``seconds``, NaN (like the measure
            values) for a model that has no trained network (``pending``, ``running``,
            ``failed``). ``attrs["hparams"]`` and ``attrs["measures"]`` name the
            hyperparameter and measure columns, as :mod:`genmeasures.evaluate` reads them;
            measures are in the catalog's order.
        """
        return study_table(self._connection, list(self.space.grid), measures=measures)

    def unconverged(self) -> dict[str, list[str]]:
        """Measure name → the models whose value in :meth:`table` did not converge.

        Such a value comes from an iterative search stopped before its criterion (e.g. a
        sharpness search saturated at its bound); its status is ``ok`` and it is stored with
        ``converged`` false.
        """
        return unconverged_values(self._connection)

    def unconverged_reasons(self) -> dict[str, str]:
        """Measure name → why its values in :meth:`table` did not converge, in words."""
        return unconverged_reasons(self._connection)

    def measures_table(self) -> pd.DataFrame:
        """Every stored measure value in long form, with its parameters, status and versions.

        ``version`` is the library's, ``measure_version`` the measure's (NaN: stored before
        measures had versions); ``stale`` says whether the value must be recomputed
        (:func:`~genmeasures.zoo.versions.is_stale`).
        """
        return long_measures(self._connection)

    def export(self, path: str | os.PathLike) -> Path:
        """Write :meth:`table` to ``.csv`` or ``.parquet`` (by the file's suffix).

        Raises:
            StudyError: for another suffix, or Parquet without ``pyarrow``.
        """
        return write_table(self.table(), path)


def _version() -> str:
    return version("genmeasures")
