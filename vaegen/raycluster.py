"""Connect to a Ray cluster, or start a local one sized to this machine."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from vaegen.errors import VaegenError


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


@dataclass(frozen=True)
class TrainLayout:
    """The Ray Train worker group: how many workers, CPUs reserved and torch threads each."""

    workers: int
    cpus_per_worker: float
    threads: int  # 0: each worker uses its node's CPU count (see node_cpus)
    gpu: bool
    chosen_by: str  # "cluster" (sized to it) or "--workers"
    in_process: bool = False  # the one worker runs in this process (trainer/inprocess.py)

    def describe(self) -> str:
        if self.in_process:
            return (
                f"1 worker in this process (Ray Train local mode: no cluster to join), torch "
                f"threads: {self.threads} (chosen by {self.chosen_by}; --workers N for Ray actors)"
            )
        each = "its node's CPUs" if self.threads == 0 else f"{self.threads}"
        unit = "GPU" if self.gpu else ("node" if self.chosen_by == "cluster" else "worker")
        return (
            f"{self.workers} worker(s), one per {unit}, torch threads: {each} "
            f"(chosen by {self.chosen_by})"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train_layout(node_cpus: list[float], gpus: float, workers: int, use_gpu: bool) -> TrainLayout:
    """`workers` 0 sizes the group to the cluster: one worker per GPU with `use_gpu`, else one
    per CPU node using all its cores (two DDP workers on one node split its cores and add an
    all-reduce per step: slower). `node_cpus` are the CPU counts of the alive nodes."""
    total = sum(node_cpus) or 1.0
    chosen_by = "cluster" if workers == 0 else "--workers"
    if use_gpu:
        workers = workers or int(gpus)
        if workers < 1 or gpus < workers:
            raise VaegenError(
                f"--gpu needs {max(workers, 1)} GPUs in the Ray cluster; it has {gpus:g}"
            )
    elif workers == 0:
        cpus = min((c for c in node_cpus if c > 0), default=1.0)
        count = max(1, sum(1 for c in node_cpus if c > 0))
        return TrainLayout(count, cpus, 0, False, chosen_by)
    # Fractional CPUs when workers outnumber cores, so the group can always be placed.
    cpus = max(1.0, math.floor(total / workers)) if total >= workers else total / workers
    return TrainLayout(workers, cpus, max(1, int(cpus)), use_gpu, chosen_by)


def local_layout() -> TrainLayout:
    """One worker in this process using every core this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = max(1, cpus or 1)
    return TrainLayout(1, float(cpus), cpus, False, "this machine", in_process=True)


def cluster_layout(workers: int, use_gpu: bool) -> TrainLayout:
    """`train_layout` for the connected Ray cluster."""
    import ray

    cpus = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return train_layout(cpus, float(ray.cluster_resources().get("GPU", 0)), workers, use_gpu)


def node_cpus() -> int:
    """CPUs Ray sees on the node this process runs on (torch threads for a whole-node worker)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return max(1, int(node["Resources"].get("CPU", 1)))
    return max(1, os.cpu_count() or 1)
