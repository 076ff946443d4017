"""The default Ray Train worker group is sized to the cluster; --workers N still forces N."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig
from vaegen.errors import VaegenError
from vaegen.raycluster import train_layout


def test_default_is_one_worker_per_cpu_node_using_all_its_cores() -> None:
    assert TrainConfig().workers == 0  # 0: sized to the cluster
    one = train_layout([2.0], 0, workers=0, use_gpu=False)
    assert (one.workers, one.cpus_per_worker, one.threads) == (1, 2.0, 0)
    assert one.chosen_by == "cluster" and "one per node" in one.describe()
    # Heterogeneous nodes: each worker reserves what the smallest node has, threads = its node.
    three = train_layout([8.0, 16.0, 8.0, 0.0], 0, workers=0, use_gpu=False)
    assert (three.workers, three.cpus_per_worker, three.threads) == (3, 8.0, 0)


def test_gpu_default_is_one_worker_per_gpu() -> None:
    layout = train_layout([16.0], 4, workers=0, use_gpu=True)
    assert (layout.workers, layout.cpus_per_worker, layout.threads, layout.gpu) == (4, 4.0, 4, True)
    with pytest.raises(VaegenError, match="--gpu needs 1 GPUs"):
        train_layout([16.0], 0, workers=0, use_gpu=True)
    with pytest.raises(VaegenError, match="--gpu needs 2 GPUs"):
        train_layout([16.0], 1, workers=2, use_gpu=True)


def test_workers_flag_forces_the_count() -> None:
    two = train_layout([2.0], 0, workers=2, use_gpu=False)
    assert (two.workers, two.cpus_per_worker, two.threads, two.chosen_by) == (
        2,
        1.0,
        1,
        "--workers",
    )
    four = train_layout([2.0], 0, workers=4, use_gpu=False)
    assert (four.workers, four.cpus_per_worker, four.threads) == (4, 0.5, 1)
    with pytest.raises(VaegenError, match="--workers must be >= 0"):
        TrainConfig(workers=-1)


def test_config_json_layout_key_is_ignored_when_read_back() -> None:
    record = {**TrainConfig(workers=1).to_dict(), "layout": {"workers": 1}}
    assert TrainConfig.from_dict(record) == TrainConfig(workers=1)


def test_local_layout_is_one_in_process_worker_on_every_core() -> None:
    from vaegen.raycluster import local_layout

    layout = local_layout()
    assert layout.in_process and layout.workers == 1 and layout.threads >= 1
    assert layout.cpus_per_worker == layout.threads
    assert "in this process" in layout.describe() and layout.to_dict()["in_process"]
    assert not train_layout([2.0], 0, workers=0, use_gpu=False).in_process
