"""Losing a node mid-job, on a real Ray cluster: `ray start` processes stopped under a job.

A replacement actor that no node can host must not hold shards back (the live actors finish
the job), and with no actor left the job fails after --worker-wait with one line, keeping its
finished shards for --resume. The node is stopped at a known point, whatever the machine's
load: VAEGEN_TEST_SHARD_GATE lets each actor write one shard and holds the rest until then.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(ray_nodes):  # noqa: ANN001, ANN201 - conftest's RayNodes
    ray_nodes.start_head(num_cpus=2)
    return ray_nodes


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


def _nodes(shards: list[dict]) -> set[str]:
    return {s["node"]["node_id"] for s in shards}


def _lose_node_mid_job(cluster, decoder: Path, out: Path, node_cpus: int, actors: int, *args: str):  # noqa: ANN001, ANN202
    """Run a job of `actors` actors with an extra node; once each has written one shard (the
    gate holds its next), stop the node, then open the gate. (exit code, stderr)."""
    node = cluster.add_node(f"--num-cpus={node_cpus}")
    gate = out.parent / "gate"
    proc = cluster.generate(decoder, out, "--workers", str(actors), *args,
                            env={"VAEGEN_TEST_SHARD_GATE": str(gate)})  # fmt: skip
    cluster.wait_for_shards(out, proc, lambda shards: len(_nodes(shards)) == actors)
    cluster.stop(node)
    gate.touch()
    return cluster.finish(proc)


def test_live_actors_finish_when_a_lost_node_cannot_be_replaced(
    cluster,  # noqa: ANN001
    tmp_path: Path,
    decoder: Path,
) -> None:
    # Head 2 CPUs + node 2 CPUs: two actors of 1.5 CPUs, one per node. When the node goes,
    # its replacement fits nowhere; the head's actor must take its shards and finish.
    out = tmp_path / "dataset"
    returncode, stderr = _lose_node_mid_job(cluster, decoder, out, 2, 2)
    assert returncode == 0, stderr[-3000:]
    manifest = _check_complete(out)
    # The lost node wrote its one shard (the gate held its next); the head's actor wrote the
    # other 15, the lost actor's unfinished shards among them.
    by_node = Counter(s["node"]["node_id"] for s in manifest["shards"])
    assert sorted(by_node.values()) == [1, 15], by_node


def test_no_placeable_worker_fails_after_worker_wait_and_resumes(
    cluster,  # noqa: ANN001
    tmp_path: Path,
    decoder: Path,
) -> None:
    # Head 2 CPUs + node 3 CPUs, one actor: it takes 3 CPUs, which only the node has.
    out = tmp_path / "dataset"
    returncode, stderr = _lose_node_mid_job(cluster, decoder, out, 3, 1, "--worker-wait", "5")
    assert returncode == 1, stderr[-3000:]
    # One line besides the progress lines (plain text when stderr is not a terminal).
    [line] = [ln for ln in stderr.strip().splitlines() if not ln.startswith("generate: ")]
    assert line.startswith("error: no worker has been up for 5 s") and "--resume" in line
    kept = json.loads((out / "manifest.json").read_text())["shards"]
    assert len(kept) == 1  # the actor's first shard; the gate held the next until the node went
    # The head alone can finish it: one actor of 1 CPU there.
    proc = cluster.generate(decoder, out, "--workers", "1", "--resume")
    returncode, stderr = cluster.finish(proc)
    assert returncode == 0, stderr[-3000:]
    manifest = _check_complete(out)
    assert {s["sha256"] for s in kept} <= {s["sha256"] for s in manifest["shards"]}
