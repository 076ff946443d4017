"""Losing a node mid-job, on a real Ray cluster: `ray start` processes stopped under a job.

A replacement actor that no node can host must not hold shards back (the live actors finish
the job), and with no actor left the job fails after --worker-wait with one line, keeping its
finished shards for --resume.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(ray_nodes):  # noqa: ANN001, ANN201 - conftest's RayNodes
    ray_nodes.start_head(num_cpus=2)
    return ray_nodes


def _wait_for_shards(out: Path, count: int, proc, timeout: float = 120) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {"shards": []}
        if len(manifest["shards"]) >= count:
            return manifest
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{out} never had {count} shards")


def _check_complete(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 4000
    assert [s["index"] for s in manifest["shards"]] == list(range(16))
    labels = Counter()
    import pyarrow.parquet as pq

    for shard in manifest["shards"]:
        labels.update(pq.read_table(out / shard["file"]).column("label").to_pylist())
    assert dict(labels) == {int(k): v for k, v in manifest["class_counts"].items()}
    assert sum(labels.values()) == 4000 and not list(out.glob(".*.tmp"))
    return manifest


def _lose_node_mid_job(cluster, decoder: Path, out: Path, node_cpus: int, *args: str):  # noqa: ANN001, ANN202
    """Run a slow job with an extra node, stop the node after its first shards; (rc, stderr)."""
    node = cluster.add_node(f"--num-cpus={node_cpus}")
    proc = cluster.generate(decoder, out, *args, env={"VAEGEN_TEST_SHARD_DELAY": "0.5"})
    _wait_for_shards(out, 2, proc)
    cluster.stop(node)
    return cluster.finish(proc)


def test_live_actors_finish_when_a_lost_node_cannot_be_replaced(
    cluster,  # noqa: ANN001
    tmp_path: Path,
    decoder: Path,
) -> None:
    # Head 2 CPUs + node 2 CPUs: two actors of 1.5 CPUs, one per node. When the node goes,
    # its replacement fits nowhere; the head's actor must take its shards and finish.
    out = tmp_path / "dataset"
    returncode, stderr = _lose_node_mid_job(cluster, decoder, out, 2, "--workers", "2")
    assert returncode == 0, stderr[-3000:]
    manifest = _check_complete(out)
    assert len({s["node"]["node_id"] for s in manifest["shards"]}) == 2


def test_no_placeable_worker_fails_after_worker_wait_and_resumes(
    cluster,  # noqa: ANN001
    tmp_path: Path,
    decoder: Path,
) -> None:
    # Head 2 CPUs + node 3 CPUs, one actor: it takes 3 CPUs, which only the node has.
    out = tmp_path / "dataset"
    returncode, stderr = _lose_node_mid_job(
        cluster, decoder, out, 3, "--workers", "1", "--worker-wait", "5"
    )
    assert returncode == 1, stderr[-3000:]
    # One line besides the progress lines (plain text when stderr is not a terminal).
    [line] = [ln for ln in stderr.strip().splitlines() if not ln.startswith("generate: ")]
    assert line.startswith("error: no worker has been up for 5 s") and "--resume" in line
    kept = json.loads((out / "manifest.json").read_text())["shards"]
    assert 2 <= len(kept) < 16
    # The head alone can finish it: one actor of 1 CPU there.
    proc = cluster.generate(decoder, out, "--workers", "1", "--resume")
    returncode, stderr = cluster.finish(proc)
    assert returncode == 0, stderr[-3000:]
    manifest = _check_complete(out)
    assert {s["sha256"] for s in kept} <= {s["sha256"] for s in manifest["shards"]}
