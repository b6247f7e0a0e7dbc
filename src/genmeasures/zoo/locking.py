"""The locks of a study folder: one creator at a time, one trainer at a time.

Both are ``flock`` locks on files in the folder, so the kernel releases them when their holder
dies, however it dies: a lock is never left behind by a killed run. Creating a study waits for
the creation lock (creation takes a moment); training does not wait for the training lock (a
training run takes hours), it refuses with the holder's pid instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from genmeasures.errors import StudyError

#: How long a refused run waits for the lock holder to write its pid into the lock file.
OWNER_WAIT = 1.0

_OWNER_PID = re.compile(r"\.tmp-(\d+)")


@contextlib.contextmanager
def waiting(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting until it is free.

    Args:
        path: The lock file.

    Raises:
        StudyError: if the lock file cannot be opened or locked.
    """
    with _open(path) as handle:
        _flock(handle, path, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@contextlib.contextmanager
def refusing(path: Path, study: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` with this process's pid written in it, or refuse.

    Args:
        path: The lock file (created if missing).
        study: The study folder, named in the refusal.

    Raises:
        StudyError: if another process holds the lock (the message gives its pid), or the lock
            file cannot be opened or locked.
    """
    with _open(path) as handle:
        if not _flock(handle, path, fcntl.LOCK_EX | fcntl.LOCK_NB):
            raise StudyError(
                f"{study} is being trained by {_owner(handle)}; wait for it or stop it"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(path: Path) -> IO[str]:
    try:
        return path.open("a+")
    except OSError as error:
        raise StudyError(f"cannot open the lock file {path}: {error.strerror}") from error


def _flock(handle: IO[str], path: Path, operation: int) -> bool:
    """Apply ``flock``; False when it would block (another process holds the lock)."""
    try:
        fcntl.flock(handle, operation)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise StudyError(
            f"cannot lock {path}: {error.strerror} (a study folder needs a file system "
            "with flock locks)"
        ) from error
    return True


def _owner(handle: IO[str]) -> str:
    """The holder's ``pid N``: a holder writes it just after taking the lock, so wait briefly."""
    deadline = time.monotonic() + OWNER_WAIT
    while True:
        handle.seek(0)
        owner = handle.read().strip()
        if owner or time.monotonic() > deadline:
            return owner or "another process"
        time.sleep(0.02)


def written_by_live_process(path: Path) -> bool:
    """Whether ``path`` is a temporary file (``*.tmp-PID*``) that another live process writes.

    Args:
        path: A temporary file of a study folder.

    Returns:
        False for a file of this process, of a dead process, or without a pid in its name.
    """
    match = _OWNER_PID.search(path.name)
    if match is None or int(match.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True
