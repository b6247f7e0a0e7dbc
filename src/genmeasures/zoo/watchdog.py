"""A watchdog process that ends what a driver started once the driver is gone (Linux).

A local Ray instance mostly dies with the driver that started it (Ray sets ``PR_SET_PDEATHSIG`` on
its core processes), but after a SIGKILL of the driver Ray's per-node agents (DashboardAgent,
RuntimeEnvAgent) outlive it by about a minute (Ray 2.60: they retry reporting the raylet's death
to the dead GCS). Once the driver is dead they are reparented to init, and nothing can tell them
from other processes any more. So the driver starts this watchdog first: a small process that
records the driver's descendants that appear after it from ``/proc``, and, when its standard
input reaches end of file without the release byte (the driver held the only write end, and the
kernel closes it however the driver ends, SIGKILL included), sends every recorded process that
still runs SIGTERM, then SIGKILL one second later. A driver that stops cleanly writes the release
byte before closing its end, and the watchdog ends nothing. (Asking ``/proc`` at end of file
whether the driver still lives does not work: the kernel closes a dying process's files before
it becomes a zombie, and on a loaded machine the watchdog read a killed driver as alive.)

A process is recognized by its pid *and* start time, so a reused pid is never hit; a process
started less than one scan (0.2 s) before the driver died can be missed, which Ray's processes,
started with the run, never are. The watchdog runs in its own session, so a Ctrl-C to the
driver's process group does not stop it before the driver's own clean stop.

Run as ``python .../genmeasures/zoo/watchdog.py DRIVER_PID`` (the file, not the module: it needs
the standard library only, and starts in milliseconds without importing torch);
:func:`watch_descendants` does it and waits until the watchdog has seen the processes that exist
already, which it never ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

__all__ = ["watch_descendants"]

#: Seconds between two scans of the process tree, and before SIGKILL follows SIGTERM.
POLL_SECONDS = 0.2
GRACE_SECONDS = 1.0

#: What a driver that stopped cleanly writes to the watchdog before closing its end of the pipe.
RELEASED = b"r"


def watch_descendants() -> Callable[[], None]:
    """Start a watchdog of this process's descendants; returns the function that releases it.

    Call the returned function after a clean stop (e.g. after ``ray.shutdown()``): the watchdog
    then exits and ends nothing. Does nothing off Linux.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    read_end, write_end = os.pipe()  # not inheritable: no child but the watchdog gets an end
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-I", __file__, str(os.getpid())],
            stdin=read_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    with watchdog.stdout:  # one line once it has taken stock of what runs already
        watchdog.stdout.readline()

    def release() -> None:
        os.write(write_end, RELEASED)
        os.close(write_end)

    return release


def _stat(pid: int) -> tuple[int, str] | None:
    """A running process's parent pid and start time (clock ticks since boot), else None.

    A zombie has exited (it only waits for its parent to reap it): None too.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold ") "
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def _descendants(root: int) -> dict[int, str]:
    """Every process below ``root``, with its start time."""
    children: dict[int, list[int]] = defaultdict(list)
    starts: dict[int, str] = {}
    for folder in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(folder.name))
        if stat is not None:
            children[stat[0]].append(int(folder.name))
            starts[int(folder.name)] = stat[1]
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children[stack.pop()]:
            if child not in found:
                found[child] = starts[child]
                stack.append(child)
    return found


def _still_running(recorded: dict[int, str]) -> list[int]:
    return [pid for pid, start in recorded.items() if (stat := _stat(pid)) and stat[1] == start]


def _end(recorded: dict[int, str]) -> None:
    """SIGTERM the recorded processes that still run, then SIGKILL those that did not exit."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _still_running(recorded):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + GRACE_SECONDS
        while _still_running(recorded) and time.monotonic() < deadline:
            time.sleep(0.05)


def main(driver: int) -> None:
    """Record ``driver``'s new descendants until standard input ends; end them unless released."""
    before = set(_descendants(driver).items())  # not started for this run: never ended
    print("watching", flush=True)
    sys.stdout.close()
    recorded: dict[int, str] = {}
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([stdin], [], [], POLL_SECONDS)
        if readable:
            if os.read(stdin, 1) == RELEASED:
                return  # released after a clean stop: the driver ended what it started
            break  # end of file without the release byte: the driver died
        recorded |= {p: s for p, s in _descendants(driver).items() if (p, s) not in before}
    _end(recorded)


if __name__ == "__main__":
    main(int(sys.argv[1]))
