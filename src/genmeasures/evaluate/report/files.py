"""The report's files: safe names for figures, and writing that never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

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
    taken = {"scores.png", "population.png"}
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
