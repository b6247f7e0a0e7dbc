"""The SQL schema of a study database (``zoo.sqlite``), its version and the migrations to it.

The version is SQLite's ``PRAGMA user_version``, written with the tables when a study is created
and checked whenever one is opened (:func:`check_schema`, then :func:`migrate`):

- version :data:`SCHEMA_VERSION`: opened as is;
- an older version: migrated in place, in one transaction, by the statements of
  :data:`MIGRATIONS` (a study made before the schema carried a version has ``user_version`` 0
  and is version 1);
- a newer version (made by a newer genmeasures): refused with a :class:`StudyError` naming both
  versions.

History:
    1. Tables ``meta``, ``models`` and ``measures``; no version recorded.
    2. The same tables; the version is recorded (migrating from 1 only records it).
    3. ``measures.measure_version``: the implementation version of the measure that computed
       each value (:attr:`~genmeasures.measures.registry.MeasureSpec.version`), beside
       ``version``, the library's. Migrating from 2 keeps every row and leaves their
       ``measure_version`` NULL: unknown, so the value is stale and ``genmeasures measure DIR``
       recomputes it.
"""

from __future__ import annotations

import re
import sqlite3
from functools import cache
from importlib import metadata
from pathlib import Path

from genmeasures.errors import StudyError
from genmeasures.zoo.states import ModelState

__all__ = [
    "METRICS",
    "MIGRATIONS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "check_schema",
    "create_schema",
    "migrate",
    "stored_version",
]

#: The version this genmeasures writes and reads.
SCHEMA_VERSION = 3

#: The version of a study whose database records none (``user_version`` 0).
UNVERSIONED = 1

#: Final metrics of a model, one column each in ``models``.
METRICS = ("train_ce", "train_error", "test_ce", "test_error", "gap", "steps", "seconds")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    hash TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    config TEXT NOT NULL,
    hparams TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({ModelState.sql_values()})),
    attempts INTEGER NOT NULL DEFAULT 0,
    {", ".join(f"{name} REAL" for name in METRICS)},
    records TEXT,
    checkpoints TEXT,
    error TEXT,
    updated REAL
);
CREATE TABLE IF NOT EXISTS measures (
    model TEXT NOT NULL REFERENCES models (hash),
    name TEXT NOT NULL,
    params TEXT NOT NULL,
    value REAL,
    log_value REAL,
    converged INTEGER NOT NULL,
    seconds REAL NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    extra TEXT,
    version TEXT NOT NULL,
    measure_version INTEGER,
    PRIMARY KEY (model, name, params)
);
"""

#: Version v → the SQL statements that take a study from v to v + 1 (run in one transaction
#: with every later step, then ``user_version`` is set to :data:`SCHEMA_VERSION`).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (),  # version 2 only records the version: the tables are those of version 1
    # A value stored before measures had versions was computed by an unknown one: NULL, stale.
    2: ("ALTER TABLE measures ADD COLUMN measure_version INTEGER",),
}


def create_schema(connection: sqlite3.Connection) -> None:
    """Create the tables of a new study and record :data:`SCHEMA_VERSION`."""
    connection.executescript(f"{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};\n")


def stored_version(connection: sqlite3.Connection) -> int:
    """The schema version a study database records (:data:`UNVERSIONED` for none)."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    return version or UNVERSIONED


def check_schema(connection: sqlite3.Connection, database: Path) -> int:
    """The schema version of an opened study database, refused if newer than this one's.

    Args:
        connection: The study's database connection.
        database: Its file, for messages.

    Returns:
        The stored version (:func:`stored_version`).

    Raises:
        StudyError: for a study of a newer schema, naming both versions, or a database whose
            tables are not a study's (naming the first table or column that differs).
        sqlite3.DatabaseError: if the file is not a readable SQLite database.
    """
    version = stored_version(connection)
    if version > SCHEMA_VERSION:
        raise StudyError(
            f"{database} has schema version {version}{_made_by(connection)}, newer than version "
            f"{SCHEMA_VERSION}, the newest this genmeasures ({_installed()}) reads; upgrade "
            "genmeasures (pip install -U genmeasures) to open it"
        )
    _check_tables(connection, database, version)
    return version


#: A column a migration adds: absent from the studies of the versions before it.
_ADDED_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


@cache
def _tables(version: int) -> dict[str, tuple[str, ...]]:
    """Table → columns of a study of ``version``.

    Those of :data:`SCHEMA` but the columns the migrations from ``version`` on add (so far
    migrations only add columns; one that does more must be reflected here).
    """
    added = {
        match
        for step in range(version, SCHEMA_VERSION)
        for statement in MIGRATIONS[step]
        for match in _ADDED_COLUMN.findall(statement)
    }
    reference = sqlite3.connect(":memory:")
    reference.executescript(SCHEMA)
    names = reference.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    tables = {
        name: tuple(
            column
            for (column,) in reference.execute(f"SELECT name FROM pragma_table_info('{name}')")
            if (name, column) not in added
        )
        for (name,) in names
    }
    reference.close()
    return tables


def _check_tables(connection: sqlite3.Connection, database: Path, version: int) -> None:
    """Refuse a database that lacks a table or column of a study (another program's, say)."""
    for table, columns in _tables(version).items():
        found = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
        if any(column not in found for column in columns):
            received = f"a table of the columns {', '.join(found)}" if found else "no such table"
            raise StudyError(
                f"{database}: table {table!r} expected the columns {', '.join(columns)} of a "
                f"genmeasures study, received {received}: the file is not a study's database "
                "(made by another program, or damaged)"
            )


def migrate(connection: sqlite3.Connection, database: Path) -> int:
    """Bring a study of an older schema to :data:`SCHEMA_VERSION` in place, in one transaction.

    Does nothing for a study of the current version. Call after :func:`check_schema`, once the
    database is known to be a study.

    Args:
        connection: The study's database connection.
        database: Its file, for messages.

    Returns:
        The version the study had.

    Raises:
        StudyError: if the migration failed (e.g. a read-only folder), naming both versions and
            how to migrate.
    """
    version = stored_version(connection)
    if version >= SCHEMA_VERSION:
        return version
    try:
        _migrate(connection)
    except sqlite3.OperationalError as error:
        made_by = _made_by(connection)
        raise StudyError(
            f"{database} has schema version {version}{made_by}; this genmeasures "
            f"({_installed()}) uses version {SCHEMA_VERSION} and migrates older studies in place "
            f"when it opens them, but migrating failed: {error}. Make the study folder writable "
            "and open it again (e.g. `genmeasures show DIR`) to migrate it, or read it with "
            "the genmeasures that made it"
        ) from error
    return version


def _migrate(connection: sqlite3.Connection) -> None:
    """Run the migrations from the stored version to :data:`SCHEMA_VERSION` in one transaction."""
    # The write lock: another opener waits, then sees the new version.
    connection.execute("BEGIN IMMEDIATE")
    try:
        for version in range(stored_version(connection), SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _made_by(connection: sqlite3.Connection) -> str:
    """`` (made by genmeasures X)`` from the study's ``meta`` table, or ``""`` if unknown."""
    try:
        row = connection.execute(
            "SELECT value FROM meta WHERE key = 'genmeasures_version'"
        ).fetchone()
    except sqlite3.DatabaseError:
        return ""
    return f" (made by genmeasures {row[0]})" if row else ""


def _installed() -> str:
    return metadata.version("genmeasures")
