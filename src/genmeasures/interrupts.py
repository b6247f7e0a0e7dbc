"""Stop a command cleanly on Ctrl-C or SIGTERM: an exception where the program is, not a kill.

Inside :func:`stopping_cleanly`, SIGINT raises :class:`KeyboardInterrupt` (as Python does by
default) and SIGTERM raises :class:`Terminated`, a subclass, so ``kill PID`` unwinds the same
cleanup as Ctrl-C: a study's workers are ended, its ``running`` rows go back to ``pending``. The
exit status follows the signal received, not the exception that reaches the top: a library the
exception passes through may raise a plain :class:`KeyboardInterrupt` of its own in its place
(on a loaded machine, a SIGTERM that reached a driver waiting on Ray came back so).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: The signals received inside the current :func:`stopping_cleanly` block, in order.
_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as cleanly as after Ctrl-C."""


def _stop(signum: int, frame: FrameType | None) -> None:
    """Signal handler: stop by raising where the program is; later signals are ignored.

    Ignoring a repeated Ctrl-C lets the stop finish its short cleanup instead of breaking it
    with a traceback.
    """
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    _received.append(signum)
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
    _received.clear()
    for signum in SIGNALS:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's exit status for a process stopped by a signal: 130 (SIGINT), 143 (SIGTERM).

    The signal is the first one received by the last :func:`stopping_cleanly` block, else the
    one ``stop`` stands for.
    """
    if _received:
        return 128 + _received[0]
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
