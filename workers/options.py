"""How to run a generation job (not what it makes: that is workers.spec.JobSpec)."""

from __future__ import annotations

from dataclasses import dataclass

from vaegen.errors import VaegenError
from workers.judge_filter import DEFAULT_MIN_ACCEPTANCE

WORKER_WAIT_S = 600.0  # default --worker-wait: room for an autoscaler to bring a node up


@dataclass(frozen=True)
class GenerateOptions:
    """Every run option of `run_generation`, checked once, when built."""

    workers: int | None = None  # actors in the pool; None: sized to the cluster
    gpus_per_worker: float = 0.0  # > 0: onnxruntime's CUDA provider
    resume: bool = False
    overwrite: bool = False
    ray_address: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    pushgateway: str | None = None
    metrics_linger: float = 0.0  # seconds to keep serving metrics after the end
    show_progress: bool = True
    io_binding: bool = False  # always on with GPUs; settable on CPU so tests cover the path
    worker_wait: float = WORKER_WAIT_S  # seconds with no actor up before the job fails
    # With --judge: a class the judge accepts less often than this stops the job (exit 2).
    # Not part of the spec: it decides whether a job goes on, never what a shard holds.
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise VaegenError("give --resume or --overwrite, not both")
        if self.workers is not None and self.workers < 1:
            raise VaegenError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise VaegenError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.metrics_linger < 0:
            raise VaegenError("--metrics-linger must be >= 0")
        if not self.worker_wait > 0:
            raise VaegenError(f"--worker-wait must be > 0 seconds, got {self.worker_wait:g}")
        if not 0 < self.min_acceptance <= 1:
            raise VaegenError(f"--min-acceptance must lie in (0, 1], got {self.min_acceptance:g}")
