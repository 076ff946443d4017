"""Actor pool sizing: never reserve every CPU; GPU requests that cannot run are refused."""

from __future__ import annotations

import pytest

from vaegen.errors import VaegenError
from workers.layout import plan_layout
from workers.options import GenerateOptions


@pytest.mark.parametrize(
    ("workers", "cpus", "want_workers", "want_threads"),
    [(None, 2, 2, 1), (1, 2, 1, 2), (3, 2, 3, 1), (None, 64, 16, 4), (None, 1, 1, 1)],
)
def test_cpu_layout_leaves_a_cpu_for_other_ray_work(
    workers: int | None, cpus: float, want_workers: int, want_threads: int
) -> None:
    layout = plan_layout(workers, 0.0, cpus=cpus, gpus=0.0)
    assert (layout.workers, layout.threads) == (want_workers, want_threads)
    assert layout.provider == "CPUExecutionProvider" and layout.num_gpus == 0
    # The whole pool reserves less than the cluster has: other Ray tasks can always run.
    assert 0 < layout.workers * layout.num_cpus <= max(cpus - 1, 0.5) + 1e-9
    assert layout.num_cpus <= layout.threads


def test_one_actor_never_needs_more_than_a_node_has() -> None:
    # Two 2-CPU nodes: one actor gets at most one node's CPUs, or Ray could never place it.
    layout = plan_layout(1, 0.0, cpus=4, gpus=0.0, node_cpus=2)
    assert (layout.workers, layout.threads, layout.num_cpus) == (1, 2, 2.0)
    layout = plan_layout(2, 0.0, cpus=4, gpus=0.0, node_cpus=2)
    assert (layout.workers, layout.threads, layout.num_cpus) == (2, 2, 1.5)


def test_gpu_layout() -> None:
    layout = plan_layout(None, 0.5, cpus=16, gpus=2)
    assert (layout.workers, layout.num_gpus, layout.provider) == (4, 0.5, "CUDAExecutionProvider")
    assert layout.workers * layout.num_cpus <= 15


@pytest.mark.parametrize(
    ("workers", "gpus_per_worker", "gpus", "message"),
    [
        (None, 1.0, 0.0, "needs a GPU, but the Ray cluster has 0"),
        (3, 1.0, 2.0, "need 3 GPUs"),
    ],
)
def test_refused_layouts(
    workers: int | None, gpus_per_worker: float, gpus: float, message: str
) -> None:
    with pytest.raises(VaegenError, match=message):
        plan_layout(workers, gpus_per_worker, cpus=8, gpus=gpus)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "--workers must be >= 1"),
        ({"gpus_per_worker": -1.0}, "--gpus-per-worker must be >= 0"),
        ({"resume": True, "overwrite": True}, "not both"),
        ({"metrics_linger": -1.0}, "--metrics-linger must be >= 0"),
        ({"worker_wait": 0.0}, "--worker-wait must be > 0"),
    ],
)
def test_refused_options(options: dict, message: str) -> None:
    # Checked once, when the options are built: before Ray starts or anything is written.
    with pytest.raises(VaegenError, match=message):
        GenerateOptions(**options)
    assert GenerateOptions().workers is None
