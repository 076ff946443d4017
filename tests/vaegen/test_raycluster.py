"""init_ray's Ctrl-C guard: a first Ctrl-C waits for the block to end, a second one does not."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from vaegen.raycluster import deferred_interrupt


@pytest.fixture(autouse=True)
def python_sigint() -> Iterator[None]:
    """Python's own Ctrl-C handler, whatever this process inherited (`cmd &` ignores SIGINT)."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_first_interrupt_waits_for_the_block() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True  # the block still runs to its end
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_interrupt_raises_at_once() -> None:
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            reached = True
    assert not reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_interrupt_no_change() -> None:
    with deferred_interrupt():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_interrupt_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
