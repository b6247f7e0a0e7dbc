"""The report's files: safe names for figures, writing that never leaves half a file, and folders.

A report folder is replaced as a whole (:func:`replacing`), so that it never mixes two reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from genmeasures.errors import EvaluationError
from genmeasures.evaluate.report.destination import check_report_folder

_SLUG_BAD = re.compile(r"[^a-z0-9._-]+")


def slugify(name: str) -> str:
    """A file-name-safe version of ``name``: lowercase ``[a-z0-9._-]``, at most 60 characters."""
    slug = _SLUG_BAD.sub("-", name.lower()).strip("-.")
    return slug[:60].rstrip("-.") or "measure"


def figure_names(measures: Sequence[str], *, prefix: str = "scatter") -> dict[str, str]:
    """A unique, file-name-safe PNG name for each measure's scatter (or trend) figure.

    Names that collide after :func:`slugify` (``a/b`` and ``a b``) get ``-2``, ``-3``, ...;
    the names never collide with the report's other figures.

    Args:
        measures: The measures (or, with ``prefix="trend"``, the hyperparameters of
            :func:`trend_figure`).
        prefix: The names' first word: ``scatter-<measure>.png``, ``trend-<hparam>.png``.
    """
    taken = {"scores.png", "population.png", "robust-worst.png"}
    names: dict[str, str] = {}
    for measure in measures:
        stem = f"{prefix}-{slugify(measure)}"
        candidate, k = f"{stem}.png", 1
        while candidate in taken:
            k += 1
            candidate = f"{stem}-{k}.png"
        taken.add(candidate)
        names[measure] = candidate
    return names


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


#: The sub-folder of a report that holds its figures (PNG files only).
FIGURES_FOLDER = "figures"

#: ``renameat2`` arguments: the working directory, and the flag that swaps two paths.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

#: The two kinds of folder a report's writer leaves beside the report while it works.
_STAGING = ("new", "old")


@contextlib.contextmanager
def replacing(folder: Path, report_files: Collection[str]) -> Iterator[Path]:
    """A new, empty folder beside ``folder`` to write a report into, swapped in when done.

    The report is written into a hidden sibling folder; when the ``with`` block ends without an
    error, that folder takes ``folder``'s place in one atomic exchange of names
    (``renameat2(RENAME_EXCHANGE)``, on Linux; elsewhere two renames, a moment apart) and the
    previous report is deleted. A kill at any point leaves either the old report or the new
    one at ``folder``, never a mix: files of the previous report that the new one does not
    write (e.g. figures of measures no longer scored) disappear with it. The hidden folders a
    killed writer left are removed by the next report written beside them.

    Args:
        folder: The report folder; created with its parents if missing.
        report_files: The names a report writes into ``folder`` (besides
            :data:`FIGURES_FOLDER`).

    Yields:
        The folder to write the report into.

    Raises:
        EvaluationError: if ``folder`` holds anything a report does not write (it would be
            deleted with the old report), or cannot be created.
    """
    folder = Path(folder).absolute()
    _check_replaceable(folder, report_files)
    check_report_folder(folder)  # a file in the way is named, not reported as "File exists"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(folder)
        staging = _sibling(folder, "new")
        staging.mkdir()
    except OSError as error:
        raise EvaluationError(
            f"cannot create the report folder {folder}: {error.strerror or error}; give a "
            "--report folder that can be written"
        ) from error
    try:
        yield staging
        _swap(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new report on failure, else the old


def _check_replaceable(folder: Path, report_files: Collection[str]) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise EvaluationError(f"the report folder {folder} is a file, expected a folder")
    foreign = [p.name for p in folder.iterdir() if not _is_report_file(p, report_files)]
    figures = folder / FIGURES_FOLDER
    if figures.is_dir():
        foreign += [f"{FIGURES_FOLDER}/{p.name}" for p in figures.iterdir() if not _is_figure(p)]
    if foreign:
        listed = ", ".join(sorted(foreign)[:5]) + (", ..." if len(foreign) > 5 else "")
        raise EvaluationError(
            f"the report folder {folder} holds files that a report does not write ({listed}); "
            "a new report replaces its folder as a whole and would delete them: give a new or "
            "empty --report folder, or move them"
        )


def _is_report_file(path: Path, report_files: Collection[str]) -> bool:
    if path.name == FIGURES_FOLDER:
        return path.is_dir()
    return path.is_file() and (path.name in report_files or _is_temporary(path))


def _is_figure(path: Path) -> bool:
    return path.is_file() and (path.suffix == ".png" or _is_temporary(path))


def _is_temporary(path: Path) -> bool:
    """A file :func:`_write_atomic` left under its temporary name."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _sibling(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _remove_leftovers(folder: Path) -> None:
    """Delete the hidden folders that writers of this report killed while working left."""
    for kind in _STAGING:
        for path in folder.parent.glob(f".{folder.name}.{kind}-*-*"):
            pid = path.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap(staging: Path, folder: Path) -> None:
    """Put ``staging`` at ``folder``; the previous ``folder``, if any, ends up at ``staging``."""
    if not folder.exists():
        os.rename(staging, folder)
    elif not _exchange(staging, folder):
        old = _sibling(folder, "old")
        os.rename(folder, old)
        try:
            os.rename(staging, folder)
        except BaseException:
            os.rename(old, folder)
            raise
        os.rename(old, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where the system cannot (not Linux, old kernel)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))
