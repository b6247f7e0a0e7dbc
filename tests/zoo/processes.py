"""The process tree read from /proc (Linux): what a test needs to see that workers end."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

#: How long workers may outlive their driver (issue 15).
GRACE = 10.0


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, parent = text[text.rindex(")") + 2 :].split()[:2]  # the name may hold ") "
    return state, int(parent)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree."""
    children: dict[int, list[int]] = defaultdict(list)
    for folder in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(folder.name))
        if stat is not None:
            children[stat[1]].append(int(folder.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children[stack.pop()]:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def running(pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that still run (a zombie has exited: it only waits to be reaped)."""
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[0] != "Z"}


def command_line(pid: int) -> bytes:
    """A process's command line (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pool_workers(pid: int) -> set[int]:
    """The spawned multiprocessing workers below ``pid``."""
    return {child for child in descendants(pid) if b"spawn_main" in command_line(child)}


def end(pids: Iterable[int]) -> None:
    """SIGKILL those of ``pids`` still running: a failed test leaves nothing behind either."""
    for pid in running(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took."""
    begin = time.monotonic()
    while not condition():
        if time.monotonic() - begin > timeout:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.02)
    return time.monotonic() - begin
