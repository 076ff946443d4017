"""Manifest bookkeeping: totals, resume compatibility, and how often it is rewritten."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from vaegen.dataset_format import MANIFEST
from vaegen.errors import VaegenError
from workers.manifest import (
    ManifestSaver,
    ShardRecord,
    add_shard,
    check_resumable,
    new_manifest,
    write_manifest,
)
from workers.spec import build_spec


def _record(index: int, counts: dict[str, int]) -> ShardRecord:
    return ShardRecord(
        index=index,
        file=f"part-{index:05d}.parquet",
        rows=sum(counts.values()),
        first_id=0,
        sha256="0" * 64,
        bytes=1,
        seed=1,
        class_counts=counts,
        provider="CPUExecutionProvider",
        node={"hostname": "h"},
        pid=1,
        seconds=0.5,
        batch_seconds=(0.1,),
    )


def test_totals_follow_finished_shards(cvae_onnx: Path, tmp_path: Path) -> None:
    manifest = new_manifest(build_spec(str(cvae_onnx), 30, shard_size=10))
    add_shard(manifest, _record(2, {"3": 4, "10": 6}))
    add_shard(manifest, _record(0, {"3": 10}))
    add_shard(manifest, _record(2, {"3": 4, "10": 6}))  # a repeat replaces, never double counts
    assert [s["index"] for s in manifest["shards"]] == [0, 2]
    assert manifest["class_counts"] == {"3": 14, "10": 6} and manifest["num_rows"] == 20
    assert "batch_seconds" not in manifest["shards"][0]
    write_manifest(tmp_path, manifest)
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest
    # Readable by others, like every file of the dataset: 0666 minus the umask, not mkstemp's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / MANIFEST).stat().st_mode & 0o777 == 0o666 & ~umask


def test_totals_match_a_recount_in_any_order(cvae_onnx: Path) -> None:
    # Shards finish in any order and a resume may replace one with a different record.
    manifest = new_manifest(build_spec(str(cvae_onnx), 30, shard_size=10))
    rng = random.Random(0)
    order = [rng.randrange(500) for _ in range(2000)]
    for index in order:
        add_shard(manifest, _record(index, {str(index % 7): 1 + index % 5, "9": rng.randrange(3)}))
    shards = manifest["shards"]
    assert [s["index"] for s in shards] == sorted(set(order))
    recount: dict[str, int] = {}
    for shard in shards:
        for label, n in shard["class_counts"].items():
            recount[label] = recount.get(label, 0) + n
    assert manifest["class_counts"] == {k: v for k, v in sorted(recount.items()) if v}
    assert manifest["num_rows"] == sum(s["rows"] for s in shards)


def test_resume_needs_the_same_spec_and_model(cvae_onnx: Path, vae_onnx: Path) -> None:
    old = new_manifest(build_spec(str(cvae_onnx), 30, shard_size=10))
    check_resumable(old, build_spec(str(cvae_onnx), 30, shard_size=10), Path("d"))
    with pytest.raises(VaegenError, match=r"shard_size: 10 -> 11"):
        check_resumable(old, build_spec(str(cvae_onnx), 30, shard_size=11), Path("d"))
    with pytest.raises(VaegenError, match="another model"):
        check_resumable(old, build_spec(str(vae_onnx), 30, shard_size=10), Path("d"))
    # The batch size changes speed, never bytes (test_job checks the hashes): a resume may
    # change it, e.g. to finish a GPU job on CPU actors.
    check_resumable(old, build_spec(str(cvae_onnx), 30, shard_size=10, batch_size=7), Path("d"))


def test_saver_spaces_out_costly_rewrites(tmp_path: Path) -> None:
    manifest = {"shards": []}
    saver = ManifestSaver(tmp_path, manifest)
    saver.save()
    assert (tmp_path / MANIFEST).exists()
    saver.cost = 10.0  # pretend one rewrite takes 10 s: the next may wait 200 s
    manifest["shards"].append(1)
    saver.save()
    assert json.loads((tmp_path / MANIFEST).read_text())["shards"] == []
    saver.save(force=True)
    assert json.loads((tmp_path / MANIFEST).read_text())["shards"] == [1]
    saver.cost, saver.last = 0.001, time.monotonic() - 1
    manifest["shards"].append(2)
    saver.save()
    assert json.loads((tmp_path / MANIFEST).read_text())["shards"] == [1, 2]
