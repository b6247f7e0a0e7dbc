"""SIGINT and SIGTERM stop a command with an exception, and its exit status names the signal."""

from __future__ import annotations

import os
import signal
import time

import pytest

from genmeasures.interrupts import Terminated, exit_status, stopping_cleanly


def signal_myself(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(5)  # the handler raises at once, ending the sleep


def test_sigterm_raises_terminated_and_the_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated), stopping_cleanly():
        signal_myself(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_the_exit_status_follows_the_signal_even_if_a_library_replaced_the_exception(
    signum: int, status: int
) -> None:
    with pytest.raises(KeyboardInterrupt) as caught, stopping_cleanly():
        try:
            signal_myself(signum)
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # what a library may do with it
    assert type(caught.value) is KeyboardInterrupt
    assert exit_status(caught.value) == status


def test_without_a_signal_the_exception_decides() -> None:
    with stopping_cleanly():
        pass
    assert exit_status(Terminated()) == 143
    assert exit_status(KeyboardInterrupt()) == 130
