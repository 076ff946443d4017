"""Generated-set reader (parquet raw/png, npz, imagefolder) and decoder sampling."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eval.samples import balanced_labels, read_samples, sample_from_decoder
from vaegen.errors import VaegenError

NAMES = [str(i) for i in range(10)]
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def images_labels(digits: Any) -> tuple[np.ndarray, np.ndarray]:
    train, _ = digits
    return train.images[:230], train.labels[:230]


@pytest.mark.parametrize(
    ("fmt", "encoding"),
    [("parquet", "raw"), ("parquet", "png"), ("npz", "raw"), ("imagefolder", "png")],
)
def test_reads_every_format_exactly(
    tmp_path: Path,
    make_generated: Callable[..., Path],
    images_labels: tuple[np.ndarray, np.ndarray],
    fmt: str,
    encoding: str,
) -> None:
    images, labels = images_labels
    root = make_generated(tmp_path / fmt, images, labels, NAMES, fmt=fmt, encoding=encoding)
    got = read_samples(root, SHAPE, NAMES)
    assert got.format == fmt and got.labeled
    # Rows come back in id order (labels.csv order for an image folder).
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.images, images)
    limited = read_samples(root, SHAPE, NAMES, limit=150)
    assert len(limited.labels) == 150
    np.testing.assert_array_equal(limited.images, images[:150])


def test_unlabeled_samples(
    tmp_path: Path, make_generated: Callable[..., Path], images_labels: Any
) -> None:
    images, _ = images_labels
    labels = np.full(len(images), -1, dtype=np.int64)
    got = read_samples(make_generated(tmp_path / "u", images, labels, []), SHAPE, NAMES)
    assert not got.labeled and got.class_counts() == {"-1": len(images)}


def _corrupt(kind: str, root: Path) -> None:
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    part = root / manifest["shards"][0]["file"]
    if kind == "no-manifest":
        manifest_path.unlink()
    elif kind == "foreign-manifest":
        manifest_path.write_text(json.dumps({"kind": "something-else"}))
    elif kind == "bad-json":
        manifest_path.write_text("{not json")
    elif kind == "shape-mismatch":
        manifest["image_shape"] = [1, 16, 16]
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "sha-mismatch":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    elif kind in ("garbage-parquet", "wrong-columns", "short-images", "missing-shard"):
        for shard in manifest["shards"]:
            shard.pop("sha256")  # so the parser itself must notice
        manifest_path.write_text(json.dumps(manifest))
        if kind == "garbage-parquet":
            part.write_bytes(b"PAR1 this is not parquet PAR1")
        elif kind == "missing-shard":
            part.unlink()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            cols = {"id": pa.array([0], pa.int64()), "label": pa.array([0], pa.int64())}
            if kind == "short-images":
                cols["label_name"] = pa.array(["0"])
                cols["image"] = pa.array([b"\x00" * 10], pa.binary())
            pq.write_table(pa.table(cols), part)
    elif kind == "incomplete":
        manifest["complete"] = False
        manifest_path.write_text(json.dumps(manifest))


CORRUPTIONS = [
    "no-manifest",
    "foreign-manifest",
    "bad-json",
    "shape-mismatch",
    "sha-mismatch",
    "garbage-parquet",
    "wrong-columns",
    "short-images",
    "missing-shard",
    "incomplete",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_or_foreign_dirs_raise(
    tmp_path: Path, make_generated: Callable[..., Path], images_labels: Any, kind: str
) -> None:
    images, labels = images_labels
    root = make_generated(tmp_path / "d", images, labels, NAMES)
    _corrupt(kind, root)
    with pytest.raises(VaegenError):
        read_samples(root, SHAPE, NAMES)


def test_other_checks(tmp_path: Path, make_generated: Callable[..., Path], images_labels: Any):
    images, labels = images_labels
    root = make_generated(tmp_path / "d", images, labels, NAMES)
    with pytest.raises(VaegenError, match="model makes"):
        read_samples(root, (1, 28, 28), NAMES)
    with pytest.raises(VaegenError, match="classes"):
        read_samples(root, SHAPE, [f"c{i}" for i in range(10)])
    with pytest.raises(VaegenError, match="not a directory"):
        read_samples(tmp_path / "absent", SHAPE, NAMES)
    # npz shard whose images have another shape than the manifest says.
    npz_root = make_generated(tmp_path / "n", images, labels, NAMES, fmt="npz")
    part = npz_root / "part-00000.npz"
    np.savez(part, id=np.arange(3), label=np.zeros(3, np.int64), images=np.zeros((3, 1, 4, 4)))
    manifest = json.loads((npz_root / "manifest.json").read_text())
    manifest["shards"][0].pop("sha256")
    (npz_root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VaegenError, match="part-00000.npz"):
        read_samples(npz_root, SHAPE, NAMES)


def test_balanced_labels() -> None:
    labels = balanced_labels(23, 10)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() == 1
    assert list(counts[:3]) == [3, 3, 3]


def test_decoder_samples_are_seeded_balanced_and_batch_free(cvae_model: Any) -> None:
    a = sample_from_decoder(cvae_model, 105, NAMES, seed=4, batch_size=7)
    b = sample_from_decoder(cvae_model, 105, NAMES, seed=4, batch_size=1000)
    c = sample_from_decoder(cvae_model, 105, NAMES, seed=5)
    assert a.images.dtype == np.uint8 and a.images.shape == (105, *SHAPE)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert np.bincount(a.labels).tolist() == [11] * 5 + [10] * 5
    # Labels reach the decoder: class-conditional means differ between classes.
    means = [a.images[a.labels == k].astype(float).mean(0) for k in range(10)]
    assert np.abs(means[0] - means[1]).max() > 10
    with torch.no_grad():
        z = torch.randn(
            (105, cvae_model.cfg.latent_dim), generator=torch.Generator().manual_seed(4)
        )
        ref = cvae_model.decode(z, torch.from_numpy(a.labels))
    np.testing.assert_array_equal(a.images, torch.round(ref * 255).to(torch.uint8).numpy())
