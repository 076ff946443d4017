"""The generated images to score: a workers' DATASET directory, or fresh draws from RUN's decoder.

DATASET is read through its file contract only (see workers/manifest.py and workers/writers.py
for the writer's side): `manifest.json` (kind "vaegen-dataset") plus parquet shards, npz shards,
or an image folder with `labels.csv`. Anything else, a shard whose sha256 differs from the
manifest, or images of another shape than the model's raises VaegenError (exit 2).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaegen.errors import VaegenError

MANIFEST = "manifest.json"
KIND = "vaegen-dataset"
SUPPORTED_MANIFEST_VERSION = 1
UNLABELED = -1
PARQUET_COLUMNS = ("id", "label", "label_name", "image")


@dataclass(frozen=True, eq=False)
class SampleSet:
    """uint8 images [N, C, H, W] and int64 labels [N] (-1 everywhere for a plain VAE)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str  # "decoder" or the DATASET path
    format: str  # "decoder", "parquet", "npz" or "imagefolder"
    seed: int | None = None

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def class_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.labels, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """N labels split as evenly as possible (the lowest classes get the remainder)."""
    base, extra = divmod(num_samples, num_classes)
    counts = [base + (1 if c < extra else 0) for c in range(num_classes)]
    return np.repeat(np.arange(num_classes, dtype=np.int64), counts)


def quantize(mean: torch.Tensor) -> torch.Tensor:
    """Decoder mean in [0, 1] -> uint8, rounding to nearest."""
    return torch.round(mean.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


@torch.no_grad()
def sample_from_decoder(
    model: torch.nn.Module,
    num_samples: int,
    class_names: list[str],
    *,
    seed: int = 0,
    device: torch.device | None = None,
    batch_size: int = 1024,
) -> SampleSet:
    """Decoder mean images for z ~ N(0, I), balanced over classes for a CVAE.

    z is drawn on the CPU from one seeded generator, so the set does not depend on the device
    or the batch size.
    """
    if num_samples < 1:
        raise VaegenError(f"--num-samples must be >= 1; got {num_samples}")
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn((num_samples, cfg.latent_dim), generator=gen)
    if cfg.conditional:
        labels = balanced_labels(num_samples, cfg.num_classes)
    else:
        labels = np.full(num_samples, UNLABELED, dtype=np.int64)
    y_all = torch.from_numpy(labels)
    images = []
    for start in range(0, num_samples, batch_size):
        z = z_all[start : start + batch_size].to(device)
        y = y_all[start : start + batch_size].to(device) if cfg.conditional else None
        images.append(quantize(model.decode(z, y)).cpu())
    return SampleSet(
        images=torch.cat(images).numpy(),
        labels=labels,
        class_names=tuple(class_names),
        source="decoder",
        format="decoder",
        seed=seed,
    )


def _bad(path: Path, reason: str) -> VaegenError:
    return VaegenError(f"--samples {path}: {reason}")


def read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise _bad(root, "not a directory")
    path = root / MANIFEST
    if not path.is_file():
        raise _bad(root, f"no {MANIFEST}; not a vaegen generated dataset")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(root, f"unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise _bad(root, f"{MANIFEST} is not a {KIND} manifest")
    version = manifest.get("manifest_version")
    if not isinstance(version, int) or version > SUPPORTED_MANIFEST_VERSION:
        raise _bad(root, f"manifest_version {version!r} is newer than this reader")
    if manifest.get("complete") is False:
        done = len(manifest.get("shards") or [])
        raise _bad(
            root,
            f"incomplete ({done} of {manifest.get('num_shards')} shards); "
            "finish it with `vaegen generate ... --resume`",
        )
    return manifest


def _shape_of(manifest: dict[str, Any], root: Path) -> tuple[int, int, int]:
    shape = manifest.get("image_shape") or (manifest.get("model") or {}).get("image_shape")
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise _bad(root, "manifest has no valid image_shape") from None
    if len(shape) != 3:
        raise _bad(root, f"manifest image_shape {list(shape)} is not [C, H, W]")
    return shape  # type: ignore[return-value]


def _format_of(manifest: dict[str, Any], root: Path) -> tuple[str, str]:
    spec = manifest.get("spec") or {}
    fmt = spec.get("format") or manifest.get("format")
    if fmt is None:  # older or hand-made manifests: infer from the files
        if (root / "labels.csv").is_file():
            fmt = "imagefolder"
        elif any(root.glob("part-*.npz")):
            fmt = "npz"
        else:
            fmt = "parquet"
    if fmt not in ("parquet", "npz", "imagefolder"):
        raise _bad(root, f"unknown format {fmt!r}")
    encoding = spec.get("encoding") or manifest.get("encoding")
    encoding = encoding or ("png" if fmt == "imagefolder" else "raw")
    return str(fmt), str(encoding)


def _read_checked(path: Path, record: dict[str, Any], root: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _bad(root, f"cannot read {path.name} ({exc.strerror or exc})") from None
    expected = record.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise _bad(root, f"{path.name} is corrupt (sha256 differs from the manifest)")
    return data


def _decode_png(data: bytes, what: str, root: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _bad(root, f"{what}: unreadable PNG ({exc})") from None
    if arr.dtype != np.uint8:
        raise _bad(root, f"{what}: PNG is not 8-bit")
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _read_parquet(
    data: bytes, name: str, shape: tuple[int, int, int], encoding: str, root: Path
) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _bad(root, f"{name} is not a readable parquet file ({exc})") from None
    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        raise _bad(root, f"{name} lacks column(s) {', '.join(missing)}")
    meta_raw = (table.schema.metadata or {}).get(b"vaegen")
    if meta_raw is not None:
        try:
            meta = json.loads(meta_raw)
            file_shape = tuple(int(v) for v in meta.get("image_shape", shape))
            encoding = str(meta.get("encoding", encoding))
        except (ValueError, TypeError, AttributeError):
            raise _bad(root, f"{name}: unreadable schema metadata") from None
        if file_shape != shape:
            raise _bad(root, f"{name} holds images of shape {list(file_shape)}, not {list(shape)}")
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    col = table.column("image").combine_chunks()
    if not (
        pa.types.is_binary(col.type)
        or pa.types.is_large_binary(col.type)
        or pa.types.is_fixed_size_binary(col.type)
    ):
        raise _bad(root, f"{name}: column image is {col.type}, not binary")
    if col.null_count:
        raise _bad(root, f"{name}: {col.null_count} rows have no image")
    if encoding == "png":
        images = [_decode_png(b, name, root) for b in col.to_pylist()]
        return labels, _stack(images, shape, name, root)
    return labels, _raw_images(col, shape, name, root)


def _raw_images(col: Any, shape: tuple[int, int, int], name: str, root: Path) -> np.ndarray:
    """Raw uint8 rows straight from the Arrow buffers (no per-row Python objects)."""
    import pyarrow as pa

    n, width = len(col), int(np.prod(shape))
    if n == 0:
        return np.zeros((0, *shape), np.uint8)
    if pa.types.is_fixed_size_binary(col.type):
        if col.type.byte_width != width:
            raise _bad(root, f"{name}: {col.type.byte_width}-byte images, expected {width} {shape}")
        start = col.offset * width
        data = np.frombuffer(col.buffers()[1], np.uint8)[start : start + n * width]
    else:
        dtype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
        offsets = np.frombuffer(col.buffers()[1], dtype)[col.offset : col.offset + n + 1]
        lengths = np.diff(offsets)
        if (lengths != width).any():
            bad = int(np.flatnonzero(lengths != width)[0])
            raise _bad(
                root, f"{name} row {bad}: {lengths[bad]} image bytes, expected {width} {shape}"
            )
        data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0] : offsets[0] + n * width]
    return data.reshape(n, *shape).copy()


def _stack(images: list[np.ndarray], shape: tuple[int, ...], name: str, root: Path) -> np.ndarray:
    for img in images:
        if img.shape != shape:
            raise _bad(root, f"{name}: an image has shape {list(img.shape)}, not {list(shape)}")
    return np.stack(images) if images else np.zeros((0, *shape), np.uint8)


def _read_npz(
    data: bytes, name: str, shape: tuple[int, int, int], root: Path
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            labels = np.asarray(npz["label"], dtype=np.int64)
            images = npz["images"]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad(root, f"{name} is not a readable shard with label and images ({exc})") from None
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != shape:
        raise _bad(root, f"{name} holds {images.dtype} {list(images.shape[1:])}, not uint8 {shape}")
    if len(labels) != len(images):
        raise _bad(root, f"{name}: {len(labels)} labels for {len(images)} images")
    return labels, images


def _read_imagefolder(
    root: Path, shape: tuple[int, int, int], limit: int | None
) -> tuple[np.ndarray, np.ndarray]:
    csv_path = root / "labels.csv"
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _bad(root, f"unreadable labels.csv ({exc})") from None
    if rows and not {"label", "path"} <= set(rows[0]):
        raise _bad(root, "labels.csv lacks the label and path columns")
    rows = rows[:limit] if limit is not None else rows
    labels, images = [], []
    resolved = root.resolve()
    for row in rows:
        path = (root / row["path"]).resolve()
        if resolved not in path.parents:
            raise _bad(root, f"labels.csv points outside the dataset: {row['path']}")
        try:
            labels.append(int(row["label"]))
            data = path.read_bytes()
        except (ValueError, OSError) as exc:
            raise _bad(root, f"labels.csv row {row}: {exc}") from None
        images.append(_decode_png(data, row["path"], root))
    return np.asarray(labels, dtype=np.int64), _stack(images, shape, "imagefolder", root)


def read_samples(
    path: str | os.PathLike[str],
    image_shape: tuple[int, int, int],
    class_names: list[str],
    *,
    limit: int | None = None,
) -> SampleSet:
    """Read a generated DATASET (the first `limit` rows when given) for scoring against a model
    that makes `image_shape` images over `class_names`."""
    root = Path(path)
    manifest = read_manifest(root)
    shape = _shape_of(manifest, root)
    if shape != tuple(image_shape):
        raise _bad(root, f"images are {list(shape)}, but the model makes {list(image_shape)}")
    fmt, encoding = _format_of(manifest, root)
    if fmt == "imagefolder":
        labels, images = _read_imagefolder(root, shape, limit)
    else:
        records = manifest.get("shards")
        if not isinstance(records, list) or not records:
            raise _bad(root, "manifest lists no shards")
        label_parts, image_parts, rows = [], [], 0
        for record in records:
            if limit is not None and rows >= limit:
                break
            name = str(record.get("file") or "")
            if not name or Path(name).name != name:
                raise _bad(root, f"manifest shard entry has a bad file name {name!r}")
            data = _read_checked(root / name, record, root)
            if fmt == "parquet":
                lab, img = _read_parquet(data, name, shape, encoding, root)
            else:
                lab, img = _read_npz(data, name, shape, root)
            label_parts.append(lab)
            image_parts.append(img)
            rows += len(lab)
        labels = np.concatenate(label_parts)
        images = np.concatenate(image_parts)
        if limit is not None:
            labels, images = labels[:limit], images[:limit]
    if len(labels) == 0:
        raise _bad(root, "holds no images")
    names = tuple(str(n) for n in manifest.get("class_names") or ())
    if labels.min() < UNLABELED or (labels.max() >= 0 and labels.max() >= len(class_names)):
        raise _bad(root, f"labels outside -1..{len(class_names) - 1}")
    if (labels >= 0).any() and names and names != tuple(class_names):
        raise _bad(root, f"its classes {list(names)} are not the dataset's {list(class_names)}")
    return SampleSet(
        images=np.ascontiguousarray(images),
        labels=labels,
        class_names=tuple(class_names),
        source=str(root),
        format=fmt,
        seed=(manifest.get("spec") or {}).get("seed"),
    )
