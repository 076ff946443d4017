"""Shard writers: parquet, npz and imagefolder, each byte-stable and written temp-then-rename.

Parquet layout (`part-NNNNN.parquet`):
  id int64, label int64, label_name string,
  image fixed_size_binary(C*H*W) holding the uint8 tensor in C, H, W order (--encoding raw),
        or binary holding one PNG per row (--encoding png).
  The schema metadata key b"vaegen" holds JSON {"image_shape": [C, H, W], "encoding": ...,
  "dtype": "uint8", "class_names": [...]}.
npz (`part-NNNNN.npz`): arrays id int64 [n], label int64 [n], images uint8 [n, C, H, W].
imagefolder: CLASS/ID.png (CLASS from `class_dir`), and labels.csv written once at the end.

Byte stability: parquet carries no timestamps (only pyarrow's created_by string), npz members get
a fixed zip date, and PNGs carry no text chunks; so one spec gives identical files on one
provider and one library version.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TMP_SUFFIX = ".tmp"
PARQUET_ROW_GROUP = 16384
WRITE_CHUNK = 1 << 20
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip epoch: no wall-clock time in the bytes


@dataclass(frozen=True)
class WrittenShard:
    file: str | None  # relative to the dataset root; None for imagefolder (one file per row)
    sha256: str
    bytes: int


def shard_filename(fmt: str, index: int) -> str | None:
    if fmt == "parquet":
        return f"part-{index:05d}.parquet"
    if fmt == "npz":
        return f"part-{index:05d}.npz"
    return None


def class_dir(label: int, name: str, class_names: Sequence[str] = ()) -> str:
    """A safe folder name for a class: its name, unless that is unusable or not unique."""
    if label < 0:
        return "unlabeled"
    safe = re.sub(r"[\\/\x00]", "_", name).strip()
    sanitized = [re.sub(r"[\\/\x00]", "_", n).strip() for n in class_names]
    if safe in ("", ".", "..") or sanitized.count(safe) > 1 or safe.startswith("."):
        return f"class_{label}"
    return safe


def image_path(label: int, name: str, sample_id: int, class_names: Sequence[str]) -> str:
    return f"{class_dir(label, name, class_names)}/{sample_id}.png"


def _temp_name(final: Path) -> Path:
    # A fixed temp name per target is safe: one shard has one writer at a time, and a retried
    # task rewrites the same bytes. The leading dot and .tmp let the driver sweep leftovers.
    return final.with_name(f".{final.name}{TMP_SUFFIX}")


def _write_atomic(final: Path, data: bytes | memoryview) -> None:
    tmp = _temp_name(final)
    view = memoryview(data)
    with open(tmp, "wb") as fh:
        # In 1 MiB pieces: one 12 MiB write() into a new ext4 file took 28-32 ms of kernel
        # CPU in some runs here (3-4 ms in others); 1 MiB pieces took 3-5 ms in every run
        # (bench/write.py).
        for start in range(0, view.nbytes, WRITE_CHUNK):
            fh.write(view[start : start + WRITE_CHUNK])
    os.replace(tmp, final)


def encode_png(image: np.ndarray) -> bytes:
    """One CHW uint8 image -> PNG bytes (deterministic: no text chunks or timestamps)."""
    from PIL import Image

    # Pillow picks L, RGB or RGBA from the array's shape.
    arr = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
    pil = Image.fromarray(arr)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> CHW uint8."""
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(data)))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _int64_array(values: np.ndarray):  # noqa: ANN202 - a pyarrow.Array
    import pyarrow as pa

    data = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(data), [None, pa.py_buffer(data)])


def _binary_array(items: Sequence[bytes], kind):  # noqa: ANN001, ANN202 - pyarrow types
    """A string or binary array over `items` (int32 offsets, as pa.array would build)."""
    import pyarrow as pa

    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in items], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} bytes of {kind} in one shard: use a smaller --shard-size")
    return pa.Array.from_buffers(
        kind,
        len(items),
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(items))],
    )


def _parquet_table(
    ids: np.ndarray,
    labels: np.ndarray,
    names_by_label: dict[int, str],
    images: np.ndarray,
    encoding: str,
    class_names: Sequence[str],
):  # noqa: ANN202 - a pyarrow.Table; pyarrow is imported lazily
    """The shard as an Arrow table, built from buffers.

    Not pa.array()/pa.table(): each asks pyarrow's pandas shim whether its input is a pandas
    object, which imports pandas, 0.26 s of every actor's first shard here (a third of a 16k
    shard's work) for a library the workers never use.
    """
    import json

    import pyarrow as pa

    n = len(ids)
    present = np.array(sorted(names_by_label), dtype=np.int64)
    names = _binary_array([names_by_label[int(lab)].encode() for lab in present], pa.string())
    label_names = names.take(_int64_array(np.searchsorted(present, labels)))  # no per-row Python
    if encoding == "raw":
        flat = np.ascontiguousarray(images).reshape(n, -1)
        image_col = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(flat.shape[1]), n, [None, pa.py_buffer(flat)]
        )
    else:
        image_col = _binary_array([encode_png(img) for img in images], pa.binary())
    meta = {
        "image_shape": list(images.shape[1:]),
        "encoding": encoding,
        "dtype": "uint8",
        "class_names": list(class_names),
    }
    columns = [_int64_array(ids), _int64_array(labels), label_names, image_col]
    table = pa.Table.from_arrays(columns, names=["id", "label", "label_name", "image"])
    return table.replace_schema_metadata({"vaegen": json.dumps(meta)})


def _write_parquet_atomic(final: Path, table) -> tuple[str, int]:  # noqa: ANN001 - pa.Table
    """Write `table` to a temp file, hash the file as written, rename; (sha256, bytes)."""
    import pyarrow.parquet as pq

    tmp = _temp_name(final)
    # Straight to the file, which pyarrow writes page by page: building the file in memory and
    # writing it in one piece took 20-45 ms per 16k-row MNIST shard here, this 8-16 ms.
    # Images barely compress with dictionaries or gain from min/max statistics: skip both.
    pq.write_table(
        table,
        tmp,
        row_group_size=PARQUET_ROW_GROUP,
        compression="snappy",
        use_dictionary=["label_name"],
        write_statistics=["id", "label"],
    )
    digest = file_digest(tmp)  # from the page cache: it hashes exactly the bytes on disk
    size = tmp.stat().st_size
    os.replace(tmp, final)
    return digest, size


def _npz_bytes(ids: np.ndarray, labels: np.ndarray, images: np.ndarray) -> memoryview:
    # np.savez stamps the wall-clock time into each zip member; write the zip by hand instead.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in (("id", ids), ("label", labels), ("images", images)):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getbuffer()


def write_shard(
    out_dir: str | os.PathLike[str],
    *,
    fmt: str,
    encoding: str,
    index: int,
    ids: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    class_names: Sequence[str],
) -> WrittenShard:
    """Write one shard under `out_dir` and return its file name and sha256."""
    out = Path(out_dir)
    names_by_label = {int(lab): ("" if lab < 0 else class_names[lab]) for lab in np.unique(labels)}
    if fmt == "imagefolder":
        return _write_imagefolder(out, ids, labels, images, names_by_label, class_names)
    name = shard_filename(fmt, index)
    if fmt == "parquet":
        table = _parquet_table(ids, labels, names_by_label, images, encoding, class_names)
        digest, size = _write_parquet_atomic(out / name, table)
        return WrittenShard(file=name, sha256=digest, bytes=size)
    if fmt != "npz":
        raise ValueError(f"unknown format {fmt!r}")
    view = memoryview(_npz_bytes(ids, labels, images))
    _write_atomic(out / name, view)
    return WrittenShard(file=name, sha256=hashlib.sha256(view).hexdigest(), bytes=view.nbytes)


def _write_imagefolder(
    out: Path,
    ids: np.ndarray,
    labels: np.ndarray,
    images: np.ndarray,
    names_by_label: dict[int, str],
    class_names: Sequence[str],
) -> WrittenShard:
    digest = hashlib.sha256()
    total = 0
    for lab in names_by_label:
        (out / class_dir(lab, names_by_label[lab], class_names)).mkdir(exist_ok=True)
    for sample_id, lab, img in zip(ids.tolist(), labels.tolist(), images, strict=True):
        rel = image_path(lab, names_by_label[lab], sample_id, class_names)
        data = encode_png(img)
        _write_atomic(out / rel, data)
        digest.update(f"{rel}\t{hashlib.sha256(data).hexdigest()}\n".encode())
        total += len(data)
    return WrittenShard(file=None, sha256=digest.hexdigest(), bytes=total)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def imagefolder_digest(
    out: Path, ids: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> str | None:
    """The shard hash of existing imagefolder files, or None if one is missing."""
    digest = hashlib.sha256()
    for sample_id, lab in zip(ids.tolist(), labels.tolist(), strict=True):
        rel = image_path(lab, "" if lab < 0 else class_names[lab], sample_id, class_names)
        path = out / rel
        if not path.is_file():
            return None
        digest.update(f"{rel}\t{file_digest(path)}\n".encode())
    return digest.hexdigest()


def sweep_temp_files(out: Path) -> int:
    """Remove temp files a killed writer left behind (ours all start with '.' and end .tmp)."""
    removed = 0
    for path in out.rglob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def read_parquet_images(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, images uint8 [n, C, H, W]) from one parquet shard, raw or PNG."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"vaegen"])
    shape = tuple(meta["image_shape"])
    ids = table.column("id").to_numpy()
    labels = table.column("label").to_numpy()
    col = table.column("image").combine_chunks()
    if meta["encoding"] == "raw":
        width = int(np.prod(shape))
        buf = np.frombuffer(col.buffers()[1], dtype=np.uint8)
        start = col.offset * width
        images = buf[start : start + len(col) * width].reshape(len(col), *shape)
    else:
        images = (
            np.stack([decode_png(b) for b in col.to_pylist()])
            if len(col)
            else np.zeros((0, *shape), np.uint8)
        )
    return ids, labels, images
