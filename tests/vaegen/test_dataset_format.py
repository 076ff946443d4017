"""The DATASET contract: every format and encoding the writers make reads back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vaegen.dataset_format import (
    FORMATS,
    HF_SCHEMA_KEY,
    MANIFEST,
    MANIFEST_KIND,
    SCHEMA_KEY,
    balanced_counts,
    class_dir,
    decode_png,
    encode_png,
    schema_metadata,
)
from vaegen.dataset_reader import DatasetError, open_dataset, read_rows, read_shard

NAMES = ("zero", "one/two", "three")
CASES = [(fmt.name, enc) for fmt in FORMATS.values() for enc in fmt.encodings]


def _write_dataset(root: Path, fmt: str, encoding: str, labels: np.ndarray, images: np.ndarray):  # noqa: ANN202
    """Shards of 40 rows by the workers' writers, labels.csv and a minimal complete manifest."""
    from workers.writers import write_labels_csv, write_shard

    root.mkdir()
    ids = np.arange(len(labels), dtype=np.int64)
    shards, parts = [], []
    for index, start in enumerate(range(0, len(ids), 40)):
        sl = slice(start, start + 40)
        written = write_shard(root, fmt=fmt, encoding=encoding, index=index, ids=ids[sl],
                              labels=labels[sl], images=images[sl], class_names=NAMES)  # fmt: skip
        shards.append({"index": index, "file": written.file, "sha256": written.sha256})
        parts.append((ids[sl], labels[sl]))
    if fmt == "imagefolder":
        write_labels_csv(root, parts, NAMES)
    manifest = {"kind": MANIFEST_KIND, "manifest_version": 1, "complete": True,
                "spec": {"format": fmt, "encoding": encoding, "seed": 5},
                "image_shape": list(images.shape[1:]), "class_names": list(NAMES),
                "shards": shards}  # fmt: skip
    (root / MANIFEST).write_text(json.dumps(manifest))
    return ids


@pytest.mark.parametrize(("fmt", "encoding"), CASES, ids="-".join)
@pytest.mark.parametrize("shape", [(1, 5, 4), (3, 4, 6)], ids=["gray", "rgb"])
def test_every_format_round_trips(tmp_path: Path, fmt: str, encoding: str, shape) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, 100) if shape[0] == 1 else np.full(100, -1)
    images = rng.integers(0, 256, (100, *shape), dtype=np.uint8)
    ids = _write_dataset(tmp_path / "ds", fmt, encoding, labels, images)
    dataset = open_dataset(tmp_path / "ds")
    assert (dataset.format, dataset.encoding, dataset.image_shape) == (fmt, encoding, shape)
    assert dataset.class_names == NAMES and dataset.seed == 5
    rows = read_rows(dataset)
    assert np.array_equal(rows.ids, ids) and np.array_equal(rows.labels, labels)
    assert np.array_equal(rows.images, images) and rows.images.dtype == np.uint8
    first = read_rows(dataset, limit=55)
    assert np.array_equal(first.images, images[:55]) and len(first.ids) == 55
    if FORMATS[fmt].suffix:  # a shard file also reads on its own, its shape from itself
        alone = read_shard(tmp_path / "ds" / FORMATS[fmt].shard_file(1))
        assert np.array_equal(alone.images, images[40:80])


def test_a_changed_shard_is_refused(tmp_path: Path) -> None:
    images = np.zeros((50, 1, 2, 2), np.uint8)
    _write_dataset(tmp_path / "ds", "npz", "raw", np.zeros(50, np.int64), images)
    part = tmp_path / "ds" / "part-00001.npz"
    part.write_bytes(part.read_bytes()[:-1] + b"\x01")
    with pytest.raises(DatasetError, match=r"ds: part-00001.npz is corrupt \(sha256"):
        read_rows(open_dataset(tmp_path / "ds"))
    with pytest.raises(DatasetError, match="not a shard file"):
        read_shard(tmp_path / "ds" / MANIFEST)


def test_names_and_metadata() -> None:
    assert FORMATS["parquet"].shard_file(7) == "part-00007.parquet"
    assert FORMATS["imagefolder"].shard_file(7) is None
    assert FORMATS["webdataset"].shard_file(7) == "part-00007.tar"
    assert [f.default_encoding for f in FORMATS.values()] == ["raw", "png", "raw", "png"]
    assert [class_dir(i, n, NAMES) for i, n in enumerate(NAMES)] == ["zero", "one_two", "three"]
    assert class_dir(-1, "", NAMES) == "unlabeled"
    assert class_dir(0, ".x", [".x"]) == "class_0" and class_dir(1, "a", ["a ", "a"]) == "class_1"
    meta = json.loads(schema_metadata((1, 2, 3), "png", ["a"])[SCHEMA_KEY])
    assert list(meta) == ["image_shape", "encoding", "dtype", "class_names"]


@pytest.mark.parametrize("encoding", ["raw", "png"])
@pytest.mark.parametrize("names", [["a", "b/c"], []])
def test_huggingface_metadata_is_what_datasets_writes(encoding: str, names: list[str]) -> None:
    # `datasets` reads the features back only from its own key and JSON layout, and only for
    # columns whose Arrow type is the feature's own (Features.from_arrow_schema).
    from datasets import ClassLabel, Features, Image, Value

    label = ClassLabel(names=names) if names else Value("int64")
    image = Image() if encoding == "png" else Value("fixed_size_binary[6]")
    features = Features(id=Value("int64"), label=label, label_name=Value("string"), image=image,
                        judge_confidence=Value("float32"))  # fmt: skip
    meta = schema_metadata((1, 2, 3), encoding, names, {"judge_confidence": "float32"})
    assert list(meta) == [SCHEMA_KEY, HF_SCHEMA_KEY]
    assert meta[HF_SCHEMA_KEY] == features.arrow_schema.metadata[HF_SCHEMA_KEY]
    assert balanced_counts(7, [5, 2]) == {2: 4, 5: 3}


def test_png_codec() -> None:
    image = np.random.default_rng(0).integers(0, 256, (4, 3, 5), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(image)), image)
    assert encode_png(image) == encode_png(image.copy())  # no timestamps or text chunks
    with pytest.raises(ValueError, match="unreadable PNG"):
        decode_png(b"not a png")
