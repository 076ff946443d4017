"""Connect to a Ray cluster, or start a local one sized to this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """`address` (or RAY_ADDRESS) joins a cluster; without one a local Ray starts.

    Reuses an existing connection, so tests can share one Ray across a module.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {
        "ignore_reinit_error": True,
        "log_to_driver": False,
        "include_dashboard": False,
        "configure_logging": False,
    }
    with deferred_interrupt():
        if address:
            ray.init(address=address, **kwargs)
        else:
            # "local", not None: with None, Ray joins any cluster a `ray start` left on this
            # machine (and then rejects num_cpus); DESIGN says no address means a fresh Ray.
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a first Ctrl-C until the block ends, then raise KeyboardInterrupt.

    Ray 2.60 segfaults at exit when KeyboardInterrupt lands while ray.init builds its core
    worker (3 of 12 timed Ctrl-Cs in a test); held, it lands after, and the exit is clean.
    A second Ctrl-C raises at once, so a hung connection can still be abandoned.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # e.g. a background job: nothing to defer
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
