"""The one DATASET reader (torch-free): a manifest, its shards, their rows as numpy arrays.

Eval scores what it reads here and the workers' tests check what they wrote with it. A parquet,
npz or webdataset shard is checked against the sha256 the manifest lists for it; an imagefolder
is read through labels.csv, its PNGs unhashed. Everything is checked against the contract
(vaegen.dataset_format); a break raises DatasetError (exit 2) naming the dataset and the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaegen.dataset_format import (
    FORMATS,
    LABELS_CSV,
    MANIFEST,
    MANIFEST_KIND,
    MANIFEST_VERSION,
    PARQUET_COLUMNS,
    SCHEMA_KEY,
    WDS_MEMBERS,
    decode_png,
)
from vaegen.errors import VaegenError

Shape = tuple[int, int, int]


class DatasetError(VaegenError):
    """A DATASET that breaks its contract: "ROOT: reason" (exit 2)."""

    def __init__(self, root: str | Path, reason: str) -> None:
        super().__init__(f"{root}: {reason}")


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows of a dataset: ids int64 [n], labels int64 [n], images uint8 [n, C, H, W]."""

    ids: np.ndarray
    labels: np.ndarray
    images: np.ndarray


@dataclass(frozen=True, eq=False)
class Dataset:
    """A complete dataset's manifest, with what a reader needs from it checked."""

    root: Path
    manifest: dict[str, Any]
    format: str
    encoding: str
    image_shape: Shape

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.manifest.get("class_names") or ())

    @property
    def seed(self) -> int | None:
        return (self.manifest.get("spec") or {}).get("seed")


def load_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of `root`, or None if it has none; DatasetError if it is not ours."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(root, f"unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise DatasetError(root, f"{MANIFEST} is not a {MANIFEST_KIND} manifest")
    version = manifest.get("manifest_version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise DatasetError(root, f"manifest_version {version!r} is newer than this reader")
    return manifest


def open_dataset(root: str | Path) -> Dataset:
    """A finished dataset's manifest, checked; DatasetError for anything else."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "not a directory")
    manifest = load_manifest(root)
    if manifest is None:
        raise DatasetError(root, f"no {MANIFEST}; not a vaegen generated dataset")
    if manifest.get("complete") is False:
        done = len(manifest.get("shards") or [])
        raise DatasetError(
            root,
            f"incomplete ({done} of {manifest.get('num_shards')} shards); "
            "finish it with `vaegen generate ... --resume`",
        )
    fmt, encoding = _format_of(manifest, root)
    return Dataset(root, manifest, fmt, encoding, _shape_of(manifest, root))


def _shape_of(manifest: dict[str, Any], root: Path) -> Shape:
    shape = manifest.get("image_shape") or (manifest.get("model") or {}).get("image_shape")
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise DatasetError(root, "manifest has no valid image_shape") from None
    if len(shape) != 3:
        raise DatasetError(root, f"manifest image_shape {list(shape)} is not [C, H, W]")
    return shape  # type: ignore[return-value]


def _format_of(manifest: dict[str, Any], root: Path) -> tuple[str, str]:
    spec = manifest.get("spec") or {}
    fmt = spec.get("format") or manifest.get("format")
    if fmt is None:  # older or hand-made manifests: infer from the files
        if (root / LABELS_CSV).is_file():
            fmt = "imagefolder"
        elif any(root.glob("part-*.npz")):
            fmt = "npz"
        elif any(root.glob("part-*.tar")):
            fmt = "webdataset"
        else:
            fmt = "parquet"
    if fmt not in FORMATS:
        raise DatasetError(root, f"unknown format {fmt!r}")
    encoding = spec.get("encoding") or manifest.get("encoding")
    return str(fmt), str(encoding or FORMATS[fmt].default_encoding)


def read_rows(dataset: Dataset, limit: int | None = None) -> Rows:
    """Every row of `dataset` in id order (the first `limit` rows when given)."""
    if dataset.format == "imagefolder":
        return _imagefolder_rows(dataset.root, dataset.image_shape, limit)
    records = dataset.manifest.get("shards")
    if not isinstance(records, list) or not records:
        raise DatasetError(dataset.root, "manifest lists no shards")
    parts: list[Rows] = []
    count = 0
    for record in records:
        if limit is not None and count >= limit:
            break
        name = str(record.get("file") or "")
        if not name or Path(name).name != name:
            raise DatasetError(dataset.root, f"manifest shard entry has a bad file name {name!r}")
        parts.append(
            _shard_rows(dataset.root / name, dataset.format, dataset.image_shape,
                        dataset.encoding, record.get("sha256"))
        )  # fmt: skip
        count += len(parts[-1].labels)
    rows = Rows(*(np.concatenate(cols) for cols in zip(*(_cols(p) for p in parts), strict=True)))
    return rows if limit is None else Rows(*(col[:limit] for col in _cols(rows)))


def read_shard(path: str | Path) -> Rows:
    """One shard file on its own; its schema metadata, arrays or PNGs give the shape."""
    path = Path(path)
    fmt = next((f.name for f in FORMATS.values() if f.suffix and path.name.endswith(f.suffix)), "")
    if fmt not in _READERS:
        raise DatasetError(path.parent, f"{path.name} is not a shard file")
    return _shard_rows(path, fmt, None, None, None)


def _cols(rows: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rows.ids, rows.labels, rows.images


def _shard_rows(
    path: Path, fmt: str, shape: Shape | None, encoding: str | None, sha256: str | None
) -> Rows:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            path.parent, f"cannot read {path.name} ({exc.strerror or exc})"
        ) from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise DatasetError(
            path.parent, f"{path.name} is corrupt (sha256 differs from the manifest)"
        )
    try:
        rows = _READERS[fmt](data, shape, encoding)
    except ValueError as exc:
        raise DatasetError(path.parent, f"{path.name}: {exc}") from None
    if not len(rows.ids) == len(rows.labels) == len(rows.images):
        raise DatasetError(path.parent, f"{path.name}: columns of different lengths")
    return rows


def _parquet_rows(data: bytes, shape: Shape | None, encoding: str | None) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"not a readable parquet file ({exc})") from None
    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"lacks column(s) {', '.join(missing)}")
    shape, encoding = _schema(table.schema.metadata, shape, encoding)
    col = table.column("image").combine_chunks()
    if pa.types.is_struct(col.type) and col.type.get_field_index("bytes") >= 0:
        col = col.field("bytes")  # Hugging Face's Image: struct<bytes, path>
    if not (
        pa.types.is_binary(col.type)
        or pa.types.is_large_binary(col.type)
        or pa.types.is_fixed_size_binary(col.type)
    ):
        raise ValueError(f"column image is {col.type}, not binary")
    if col.null_count:
        raise ValueError(f"{col.null_count} rows have no image")
    if encoding == "png":
        images = _stack([decode_png(data) for data in col.to_pylist()], shape)
    else:
        images = _raw(col, shape)
    ids, labels = (np.asarray(table.column(c).to_numpy(), np.int64) for c in ("id", "label"))
    return Rows(ids, labels, images)


def _schema(meta: dict | None, shape: Shape | None, encoding: str | None) -> tuple[Shape, str]:
    """The shard's own shape and encoding; they must agree with the manifest's, when given."""
    raw = (meta or {}).get(SCHEMA_KEY)
    if raw is None:
        if shape is None or encoding is None:
            raise ValueError("no vaegen schema metadata")
        return shape, encoding
    try:
        parsed = json.loads(raw)
        file_shape = tuple(int(v) for v in parsed.get("image_shape", shape))
        file_encoding = str(parsed.get("encoding", encoding))
    except (ValueError, TypeError, AttributeError):
        raise ValueError("unreadable schema metadata") from None
    if shape is not None and file_shape != shape:
        raise ValueError(f"holds images of shape {list(file_shape)}, not {list(shape)}")
    return file_shape, file_encoding  # type: ignore[return-value]


def _raw(col: Any, shape: Shape) -> np.ndarray:
    """Raw uint8 rows straight from the Arrow buffers (no per-row Python objects)."""
    import pyarrow as pa

    n, width = len(col), int(np.prod(shape))
    if n == 0:
        return np.zeros((0, *shape), np.uint8)
    if pa.types.is_fixed_size_binary(col.type):
        if col.type.byte_width != width:
            raise ValueError(f"{col.type.byte_width}-byte images, expected {width} {shape}")
        start = col.offset * width
        data = np.frombuffer(col.buffers()[1], np.uint8)[start : start + n * width]
    else:
        dtype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
        offsets = np.frombuffer(col.buffers()[1], dtype)[col.offset : col.offset + n + 1]
        lengths = np.diff(offsets)
        if (lengths != width).any():
            bad = int(np.flatnonzero(lengths != width)[0])
            raise ValueError(f"row {bad}: {lengths[bad]} image bytes, expected {width} {shape}")
        data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[0] + n * width]
    return data.reshape(n, *shape).copy()


def _stack(images: list[np.ndarray], shape: Shape) -> np.ndarray:
    for img in images:
        if img.shape != shape:
            raise ValueError(f"an image has shape {list(img.shape)}, not {list(shape)}")
    return np.stack(images) if images else np.zeros((0, *shape), np.uint8)


def _npz_rows(data: bytes, shape: Shape | None, encoding: str | None) -> Rows:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            ids, labels, images = (npz[key] for key in ("id", "label", "images"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"not a readable shard with id, label and images ({exc})") from None
    shape = shape or tuple(images.shape[1:])
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"holds {images.dtype} {list(images.shape[1:])}, not uint8 {shape}")
    return Rows(np.asarray(ids, np.int64), np.asarray(labels, np.int64), images)


def _wds_rows(data: bytes, shape: Shape | None, encoding: str | None) -> Rows:
    """A webdataset tar: KEY.cls, KEY.json and KEY.png per sample, in id order."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                reader = tar.extractfile(member) if member.isfile() else None
                if ext in WDS_MEMBERS and reader is not None:
                    samples.setdefault(key, {})[ext] = reader.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"not a readable tar file ({exc})") from None
    ids, labels, images = [], [], []
    for key, sample in samples.items():
        if set(sample) != set(WDS_MEMBERS):
            raise ValueError(f"sample {key} lacks {', '.join(set(WDS_MEMBERS) - set(sample))}")
        try:
            record = json.loads(sample["json"])
            ids.append(int(record["id"]))
            labels.append(int(sample["cls"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"sample {key}: bad cls or json ({exc})") from None
        images.append(decode_png(sample["png"]))
    shape = shape or (tuple(images[0].shape) if images else (0, 0, 0))
    return Rows(np.asarray(ids, np.int64), np.asarray(labels, np.int64), _stack(images, shape))


_READERS = {"parquet": _parquet_rows, "npz": _npz_rows, "webdataset": _wds_rows}


def _imagefolder_rows(root: Path, shape: Shape, limit: int | None) -> Rows:
    try:
        with open(root / LABELS_CSV, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(root, f"unreadable {LABELS_CSV} ({exc})") from None
    if rows and not {"id", "label", "path"} <= set(rows[0]):
        raise DatasetError(root, f"{LABELS_CSV} lacks the id, label and path columns")
    rows = rows[:limit] if limit is not None else rows
    resolved = root.resolve()
    ids, labels, images = [], [], []
    for row in rows:
        path = (root / row["path"]).resolve()
        if resolved not in path.parents:
            raise DatasetError(root, f"{LABELS_CSV} points outside the dataset: {row['path']}")
        try:
            ids.append(int(row["id"]))
            labels.append(int(row["label"]))
            images.append(decode_png(path.read_bytes()))
        except (ValueError, OSError) as exc:
            raise DatasetError(root, f"{LABELS_CSV} row {row}: {exc}") from None
    try:
        pixels = _stack(images, shape)
    except ValueError as exc:
        raise DatasetError(root, f"imagefolder: {exc}") from None
    return Rows(np.asarray(ids, np.int64), np.asarray(labels, np.int64), pixels)
