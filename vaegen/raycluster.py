"""Connect to a Ray cluster, or start a local one sized to this machine."""

from __future__ import annotations

import os


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
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local", not None: with None, Ray joins any cluster a `ray start` left on this machine
        # (and then rejects num_cpus); DESIGN says no address means a fresh local Ray.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
