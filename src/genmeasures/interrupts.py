"""Stop a command cleanly on Ctrl-C or SIGTERM: an exception where the program is, not a kill.

Inside :func:`stopping_cleanly`, SIGINT raises :class:`KeyboardInterrupt` (as Python does by
default) and SIGTERM raises :class:`Terminated`, a subclass, so ``kill PID`` unwinds the same
cleanup as Ctrl-C: a study's workers are ended, its ``running`` rows go back to ``pending``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as cleanly as after Ctrl-C."""


def _stop(signum: int, frame: FrameType | None) -> None:
    """Signal handler: stop by raising where the program is; later signals are ignored.

    Ignoring a repeated Ctrl-C lets the stop finish its short cleanup instead of breaking it
    with a traceback.
    """
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def stopping_cleanly() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into exceptions inside the block; the handlers are restored after.

    Outside the main thread, where Python cannot set signal handlers, it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's exit status for a process stopped by this signal: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
