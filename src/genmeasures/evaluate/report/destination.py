"""Where a report goes: a folder that exists or can be created, checked before any work.

:func:`check_report_folder` finds, without creating anything, why a folder could not be created
(a file where a folder is needed, a folder without write permission), so that a command can refuse
a bad ``--report`` before it scores anything. (:func:`~genmeasures.evaluate.report.write_report`
reports a folder it then fails to create by itself.)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from genmeasures.errors import ReportError

__all__ = ["check_report_folder"]


def _refusal(folder: Path, reason: str, system: str) -> ReportError:
    return ReportError(
        f"report folder {str(folder)!r}: expected a folder that exists or can be created and "
        f"written, received a path where it cannot: {reason} ({system})"
    )


def check_report_folder(folder: str | os.PathLike[str]) -> Path:
    """Check, creating nothing, that ``folder`` exists as a writable folder or can be created.

    The folder is checked if it exists; otherwise its nearest existing parent, which must be a
    folder the process may write in. (Write permission is what :func:`os.access` reports for the
    real user: the superuser passes it everywhere.)

    Args:
        folder: The report folder.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ReportError: naming the folder, the path in the way and the system's reason.
    """
    path = Path(folder)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    shown = repr(str(existing))
    if not existing.is_dir():
        what = "it is" if existing == path else f"{shown} is"
        raise _refusal(path, f"{what} a file, not a folder", os.strerror(errno.ENOTDIR))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _refusal(path, f"no permission to write in {shown}", os.strerror(errno.EACCES))
    return path
