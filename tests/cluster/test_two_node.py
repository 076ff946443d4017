"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start`.

`vaegen generate --ray-address` must use both nodes, and the manifest must say which node wrote
each shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(ray_nodes):  # noqa: ANN001, ANN201 - conftest's RayNodes
    """A head node (1 CPU) and a worker node (1 CPU, and 1 GPU as a resource label only)."""
    ray_nodes.start_head(num_cpus=1)
    # The GPU is declared, not real: its actors find no CUDA provider, as on a node whose
    # onnxruntime is the CPU build.
    ray_nodes.add_node("--num-cpus=1", "--num-gpus=1")
    return ray_nodes


def test_generate_spreads_over_two_nodes(cluster, tmp_path: Path, decoder: Path) -> None:  # noqa: ANN001
    out = tmp_path / "dataset"
    # Actors are fed once they are up: the gate holds the first actor after one shard until the
    # second, on the other node, has written one too, however long it takes to come up.
    gate = tmp_path / "gate"
    proc = cluster.generate(decoder, out, "--workers", "2",
                            env={"VAEGEN_TEST_SHARD_GATE": str(gate)})  # fmt: skip
    cluster.wait_for_shards(
        out, proc, lambda shards: len({s["node"]["node_id"] for s in shards}) == 2
    )
    gate.touch()
    returncode, stderr = cluster.finish(proc)
    assert returncode == 0, stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["shards"]
    assert sum(s["rows"] for s in shards) == 4000
    nodes = {s["node"]["node_id"] for s in shards}
    assert len(nodes) == 2, nodes


def test_gpu_actor_without_cuda_provider_exits_2(cluster, tmp_path: Path, decoder: Path) -> None:  # noqa: ANN001
    # The driver cannot check a remote node's onnxruntime: the actor must refuse, never
    # fall back to the CPU provider, and the driver must turn that into exit 2.
    out = tmp_path / "dataset"
    proc = cluster.generate(decoder, out, "--gpus-per-worker", "1")
    returncode, stderr = cluster.finish(proc)
    assert returncode == 2, stderr[-3000:]
    [line] = stderr.strip().splitlines()  # one line: no traceback, no Ray log noise
    assert line.startswith("error: --gpus-per-worker:") and "CUDAExecutionProvider" in line
    assert not list(out.glob("part-*"))
