"""Spec parsing and shard planning: exact class counts, id ranges, determinism."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vaegen.dataset_format import UNLABELED, label_name
from vaegen.errors import VaegenError
from workers.spec import (
    DEFAULT_BATCH_SIZE,
    GPU_BATCH_SIZE,
    build_spec,
    default_batch_size,
    plan_shards,
    shard_inputs,
    shard_label_sequence,
)


def test_class_counts_by_index_and_name(cvae_onnx: Path) -> None:
    spec = build_spec(str(cvae_onnx), 60, class_counts="0=10, c3=45,9=5")
    assert spec.class_counts == ((0, 10), (3, 45), (9, 5))
    assert spec.to_json()["class_counts"] == {"0": 10, "3": 45, "9": 5}


def test_balanced_split_gives_remainder_to_lowest_labels(cvae_onnx: Path) -> None:
    assert build_spec(str(cvae_onnx), 7, classes="5,c2").class_counts == ((2, 4), (5, 3))
    every = build_spec(str(cvae_onnx), 23).class_counts
    assert [n for _, n in every] == [3, 3, 3] + [2] * 7


def test_vae_is_unlabeled(vae_onnx: Path) -> None:
    spec = build_spec(str(vae_onnx), 11)
    assert spec.class_counts == ((UNLABELED, 11),)
    assert label_name(UNLABELED, spec.decoder.class_names) == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "--num-samples must be >= 1"),
        ({"class_counts": "0=5,11=5"}, "unknown class 11"),
        ({"class_counts": "0=5,zebra=5"}, "unknown class 'zebra'"),
        ({"class_counts": "0=5,3=4"}, "sum to 9, but --num-samples is 10"),
        ({"class_counts": "0=5,c0=5"}, "twice"),
        ({"class_counts": "0=5", "classes": "1"}, "not both"),
        ({"classes": "1,x"}, "unknown class 'x'"),
        ({"format": "npz", "encoding": "png"}, "npz"),
        ({"format": "imagefolder", "encoding": "raw"}, "imagefolder"),
        ({"format": "csv"}, "--format"),
        ({"shard_size": 0}, "--shard-size"),
        ({"seed": -1}, "--seed"),
    ],
)
def test_bad_specs(cvae_onnx: Path, kwargs: dict, message: str) -> None:
    args = {"num_samples": 10, **kwargs}
    n = args.pop("num_samples")
    with pytest.raises(VaegenError, match=message):
        build_spec(str(cvae_onnx), n, **args)


def test_vae_rejects_class_options(vae_onnx: Path) -> None:
    with pytest.raises(VaegenError, match="unconditional"):
        build_spec(str(vae_onnx), 10, classes="0")


@pytest.mark.parametrize("shard_size", [1, 7, 100, 1000, 5000])
def test_plan_covers_ids_and_exact_counts(cvae_onnx: Path, shard_size: int) -> None:
    spec = build_spec(
        str(cvae_onnx), 1000, class_counts="0=1,2=600,7=399", shard_size=shard_size, seed=3
    )
    plans = plan_shards(spec)
    assert len(plans) == spec.num_shards == -(-1000 // shard_size)
    ids = np.concatenate([np.arange(p.first_id, p.first_id + p.rows) for p in plans])
    assert np.array_equal(ids, np.arange(1000))
    assert all(p.first_id == p.index * shard_size for p in plans)
    total: Counter[int] = Counter()
    for plan in plans:
        labels = shard_label_sequence(plan)
        assert len(labels) == plan.rows
        assert Counter(labels.tolist()) == dict(plan.class_counts)
        total.update(labels.tolist())
    assert total == {0: 1, 2: 600, 7: 399}


def test_labels_are_shuffled_across_shards(cvae_onnx: Path) -> None:
    """Not laid out in class order: every shard of a 50/50 job holds both classes."""
    spec = build_spec(str(cvae_onnx), 4000, class_counts="1=2000,4=2000", shard_size=500)
    for plan in plan_shards(spec):
        counts = dict(plan.class_counts)
        assert 150 < counts[1] < 350 and counts[1] + counts[4] == 500


def test_streams_depend_on_seed_and_index_only(cvae_onnx: Path) -> None:
    a = plan_shards(build_spec(str(cvae_onnx), 300, shard_size=100, batch_size=7))
    b = plan_shards(build_spec(str(cvae_onnx), 300, shard_size=100, batch_size=4096))
    c = plan_shards(build_spec(str(cvae_onnx), 300, shard_size=100, seed=1))
    assert a == b  # batch size is not part of any draw
    assert a[0].seed != a[1].seed and a[0].seed != c[0].seed
    ids, labels, z = shard_inputs(a[1], 8)
    ids2, labels2, z2 = shard_inputs(b[1], 8)
    assert np.array_equal(labels, labels2) and np.array_equal(z, z2)
    assert ids[0] == 100 and z.dtype == np.float32 and z.shape == (100, 8)
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.2
    assert not np.array_equal(z, shard_inputs(c[1], 8)[2])


def test_default_batch_size_follows_the_provider() -> None:
    assert default_batch_size(0.0) == DEFAULT_BATCH_SIZE == 1024
    assert default_batch_size(0.25) == GPU_BATCH_SIZE == 8192
