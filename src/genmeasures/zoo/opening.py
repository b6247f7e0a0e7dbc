"""Opening a study database, also when a killed writer left a transaction to roll back.

A process killed in the middle of a write transaction leaves the database file partly written
and the pages it replaced in ``zoo.sqlite-journal`` (a *hot* journal; ``-wal`` in WAL mode). The
next connection that reads the database rolls the transaction back from it, which writes the
database and deletes the journal: an open with write access does this on its own. An open
without write access (a read-only folder or file, another user's study) cannot, and SQLite
refuses to read at all (``attempt to write a readonly database``) until someone with write
access opens the study.

:func:`open_database` makes read-only commands work on such a study: when the first read fails
and a journal is there, it copies the database and its journal into a private temporary folder,
lets SQLite roll the copy back there, loads the result into memory and reads that, read-only
(``PRAGMA query_only``), with a warning. The study's own files are left untouched; the
journal must stay until an open with write access rolls it back, since deleting it would leave
the half-written transaction in the database.

Likewise :func:`migrated` migrates a study of an older schema in place, or, without write
access, a read-only copy in memory, so that a study made by an older genmeasures can still be
read where it cannot be written.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from genmeasures.errors import GenMeasuresWarning, StudyError
from genmeasures.zoo.schema import SCHEMA_VERSION, migrate

__all__ = ["JOURNAL_SUFFIXES", "migrated", "open_database"]

#: The files beside a database that hold a transaction to roll back (rollback journal, WAL).
JOURNAL_SUFFIXES = ("-journal", "-wal")


def open_database(
    database: Path, connect: Callable[[Path], sqlite3.Connection]
) -> sqlite3.Connection:
    """Connect to a study database and read it once, so that a hot journal is rolled back.

    Args:
        database: The study's ``zoo.sqlite``.
        connect: Opens a connection with the study's settings.

    Returns:
        A connection to the database; if a killed writer's transaction could not be rolled
        back for lack of write access, a read-only connection to an in-memory copy rolled back
        (with a :class:`~genmeasures.errors.GenMeasuresWarning`).

    Raises:
        StudyError: if the transaction could not be rolled back in a copy either, saying how
            to roll it back.
        sqlite3.DatabaseError: if the file is not a readable SQLite database.
    """
    try:
        return _connect_and_read(database, connect)
    except sqlite3.OperationalError as error:
        journals = [
            path
            for path in (database.with_name(database.name + s) for s in JOURNAL_SUFFIXES)
            if path.is_file()
        ]
        if not journals:
            raise
        return _rolled_back_copy(database, journals, error)


def _connect_and_read(
    database: Path, connect: Callable[[Path], sqlite3.Connection]
) -> sqlite3.Connection:
    connection = connect(database)
    try:
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        connection.close()
        raise
    return connection


def _rolled_back_copy(
    database: Path, journals: list[Path], error: sqlite3.OperationalError
) -> sqlite3.Connection:
    """An in-memory, read-only copy of ``database`` with the killed transaction rolled back."""
    names = " and ".join(str(path) for path in journals)
    memory = sqlite3.connect(":memory:")
    try:
        with tempfile.TemporaryDirectory(prefix="genmeasures-rollback-") as folder:
            copy = Path(folder) / database.name
            for path in (database, *journals):
                shutil.copyfile(path, Path(folder) / path.name)
            disk = sqlite3.connect(copy)
            try:
                disk.backup(memory)  # reading the copy rolls its transaction back first
            finally:
                disk.close()
    except (OSError, sqlite3.DatabaseError) as failure:
        memory.close()
        raise StudyError(
            f"{database}: a process killed while writing the study left an unfinished "
            f"transaction in {names}, which SQLite rolls back when the study is next opened "
            f"with write access; this open has none ({error}) and rolling back a copy failed "
            f"({failure}). Open the study once with write access to {database.parent} (e.g. "
            f"`genmeasures show {database.parent}` as its owner), or copy the folder, "
            f"{names} included, somewhere writable and open the copy. Do not delete {names}: "
            "the database would keep the half-written transaction"
        ) from failure
    memory.execute("PRAGMA query_only = ON")
    warnings.warn(
        f"{database}: a process killed while writing the study left an unfinished transaction "
        f"in {names}, and this open cannot roll it back ({error}); reading a rolled-back copy, "
        "read-only. Open the study once with write access to roll it back in place (do not "
        "delete the journal)",
        GenMeasuresWarning,
        stacklevel=4,
    )
    return memory


def migrated(connection: sqlite3.Connection, database: Path) -> sqlite3.Connection:
    """Migrate a study to the current schema in place or, without write access, in memory.

    Args:
        connection: The study's connection (closed if a copy replaces it).
        database: Its file, for messages.

    Returns:
        ``connection``, migrated; or, if the study cannot be written, a read-only connection to
        a migrated in-memory copy (with a :class:`~genmeasures.errors.GenMeasuresWarning`).

    Raises:
        StudyError: if the migration failed for another reason
            (:func:`~genmeasures.zoo.schema.migrate`).
    """
    try:
        version = migrate(connection, database)
    except StudyError as error:
        if "readonly" not in str(error.__cause__):
            raise
        memory = sqlite3.connect(":memory:")
        connection.backup(memory)
        connection.close()
        version = migrate(memory, database)
        memory.execute("PRAGMA query_only = ON")
        warnings.warn(
            f"{database} has schema version {version} and cannot be migrated in place to version "
            f"{SCHEMA_VERSION} ({error.__cause__}); reading a migrated copy, read-only. Open "
            "the study once with write access to migrate it",
            GenMeasuresWarning,
            stacklevel=3,
        )
        return memory
    return connection
