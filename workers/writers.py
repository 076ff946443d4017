"""Shard writers, one per --format, each byte-stable and written temp-then-rename.

The layout they write is vaegen.dataset_format's contract. Byte stability: parquet carries no
timestamps (only pyarrow's created_by string), npz members get a fixed zip date, tar members a
fixed mtime, owner and mode, and PNGs carry no text chunks; so one spec gives identical files on
one provider and one library version.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vaegen.atomic import atomic_path, write_bytes_atomic
from vaegen.contracts import sha256_file
from vaegen.dataset_format import (
    FORMATS,
    LABELS_CSV,
    LABELS_CSV_COLUMNS,
    PARQUET_COLUMNS,
    encode_png,
    image_path,
    label_name,
    sample_key,
    schema_metadata,
)
from vaegen.errors import VaegenError

PARQUET_ROW_GROUP = 16384
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip epoch: no wall-clock time in the bytes


@dataclass(frozen=True)
class WrittenShard:
    file: str | None  # relative to the dataset root; None for imagefolder (one file per row)
    sha256: str
    bytes: int


@dataclass(frozen=True, eq=False)
class ShardRows:
    """What one shard holds, as its writer gets it."""

    index: int
    ids: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # uint8 [n, C, H, W]
    class_names: Sequence[str]
    # Extra per-row fields (numeric arrays [n]), in the order they are written after `image`.
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)

    def names_by_label(self) -> dict[int, str]:
        return {int(lab): label_name(lab, self.class_names) for lab in np.unique(self.labels)}

    def extra_dtypes(self) -> dict[str, str]:
        return {name: np.asarray(col).dtype.name for name, col in self.extra.items()}


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
    extra: Mapping[str, np.ndarray] | None = None,
) -> WrittenShard:
    """Write one shard under `out_dir`; returns its file name, sha256 and size.

    `extra`: more per-row fields (numeric numpy arrays of n values): parquet columns after
    `image`, npz arrays, keys of a webdataset sample's JSON; imagefolder ignores them.
    """
    if fmt not in _WRITERS:
        raise ValueError(f"unknown format {fmt!r}")
    for name, col in (extra or {}).items():
        if np.asarray(col).shape != (len(ids),) or np.asarray(col).dtype.kind not in "iuf":
            raise ValueError(f"extra field {name!r} is not one number per row")
    rows = ShardRows(index, ids, labels, images, class_names, dict(extra or {}))
    return _WRITERS[fmt](Path(out_dir), rows, encoding)


def _int64_array(values: np.ndarray):  # noqa: ANN202 - a pyarrow.Array
    return _numeric_array(np.asarray(values, dtype=np.int64))


def _numeric_array(values: np.ndarray):  # noqa: ANN202 - a pyarrow.Array
    import pyarrow as pa

    data = np.ascontiguousarray(values)
    kind = pa.from_numpy_dtype(data.dtype)
    return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(data)])


def _image_struct(pngs: Sequence[bytes]):  # noqa: ANN202 - a pyarrow.StructArray
    """Hugging Face's Image storage: struct<bytes: binary, path: string>, paths null."""
    import pyarrow as pa

    data = _binary_array(pngs, pa.binary())
    paths = pa.nulls(len(pngs), pa.string())
    return pa.StructArray.from_arrays([data, paths], names=["bytes", "path"])


def _binary_array(items: Sequence[bytes], kind):  # noqa: ANN001, ANN202 - pyarrow types
    """A string or binary array over `items` (int32 offsets, as pa.array would build)."""
    import pyarrow as pa

    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in items], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        # The user's --shard-size, not our code, made the column too big: exit 2, one line.
        raise VaegenError(
            f"{offsets[-1]} bytes of {kind} in one shard, more than a parquet column takes; "
            "use a smaller --shard-size"
        )
    return pa.Array.from_buffers(
        kind,
        len(items),
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(items))],
    )


def _parquet_table(rows: ShardRows, encoding: str):  # noqa: ANN202 - a pyarrow.Table
    """The shard as an Arrow table, built from buffers.

    Not pa.array()/pa.table(): each asks pyarrow's pandas shim whether its input is a pandas
    object, which imports pandas, 0.26 s of every actor's first shard here (a third of a 16k
    shard's work) for a library the workers never use.
    """
    import pyarrow as pa

    n = len(rows.ids)
    names_by_label = rows.names_by_label()
    present = np.array(sorted(names_by_label), dtype=np.int64)
    names = _binary_array([names_by_label[int(lab)].encode() for lab in present], pa.string())
    label_names = names.take(_int64_array(np.searchsorted(present, rows.labels)))
    if encoding == "raw":
        flat = np.ascontiguousarray(rows.images).reshape(n, -1)
        image_col = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(flat.shape[1]), n, [None, pa.py_buffer(flat)]
        )
    else:
        image_col = _image_struct([encode_png(img) for img in rows.images])
    columns = [_int64_array(rows.ids), _int64_array(rows.labels), label_names, image_col]
    columns += [_numeric_array(col) for col in rows.extra.values()]
    table = pa.Table.from_arrays(columns, names=[*PARQUET_COLUMNS, *rows.extra])
    meta = schema_metadata(rows.images.shape[1:], encoding, rows.class_names, rows.extra_dtypes())
    return table.replace_schema_metadata(meta)


def _write_parquet(out: Path, rows: ShardRows, encoding: str) -> WrittenShard:
    import pyarrow.parquet as pq

    name = FORMATS["parquet"].shard_file(rows.index)
    table = _parquet_table(rows, encoding)
    with atomic_path(out / name) as tmp:
        # Straight to the file, which pyarrow writes page by page: building the file in memory
        # and writing it in one piece took 20-45 ms per 16k-row MNIST shard here, this 8-16 ms.
        # Images barely compress with dictionaries or gain from min/max statistics: skip both.
        pq.write_table(
            table,
            tmp,
            row_group_size=PARQUET_ROW_GROUP,
            compression="snappy",
            use_dictionary=["label_name"],
            write_statistics=["id", "label"],
        )
        digest = sha256_file(tmp)  # from the page cache: exactly the bytes on disk
        size = tmp.stat().st_size
    return WrittenShard(file=name, sha256=digest, bytes=size)


def _write_npz(out: Path, rows: ShardRows, encoding: str) -> WrittenShard:
    # np.savez stamps the wall-clock time into each zip member; write the zip by hand instead.
    buf = io.BytesIO()
    arrays = (("id", rows.ids), ("label", rows.labels), ("images", rows.images))
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in (*arrays, *rows.extra.items()):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
    return _write_buffer(out, str(FORMATS["npz"].shard_file(rows.index)), buf.getbuffer())


def _write_buffer(out: Path, name: str, view: memoryview) -> WrittenShard:
    write_bytes_atomic(out / name, view)
    return WrittenShard(file=name, sha256=hashlib.sha256(view).hexdigest(), bytes=view.nbytes)


# A USTAR header of a regular file, mode 0644, uid/gid 0, mtime 0, no owner names: what
# Python 3.11's tarfile writes for such a member, built here from constant parts around the name
# and size: tarfile's own header code took half of a webdataset shard's time.
_TAR_MODE_IDS = b"0000644\0" + b"0000000\0" * 2
# typeflag "0", no link name, magic, no owner names, no device numbers (a regular file), no prefix
_TAR_TAIL = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (64 + 16 + 155)
_TAR_CONST_SUM = sum(_TAR_MODE_IDS) + sum(b"00000000000\0") + sum(_TAR_TAIL) + 8 * ord(" ")
_TAR_BLOCK, _TAR_RECORD = 512, 10240  # tarfile's BLOCKSIZE and RECORDSIZE


def _tar_member(parts: list[bytes], name: str, data: bytes) -> None:
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name {name!r} is longer than USTAR's 100 bytes")
    size = b"%011o\0" % len(data)
    chksum = _TAR_CONST_SUM + sum(raw) + sum(size)
    head = raw.ljust(100, b"\0") + _TAR_MODE_IDS + size + b"00000000000\0"
    parts += [head, b"%06o\0 " % chksum, _TAR_TAIL, b"\0" * 12, data]
    parts.append(b"\0" * (-len(data) % _TAR_BLOCK))


def _write_webdataset(out: Path, rows: ShardRows, encoding: str) -> WrittenShard:
    """KEY.cls, KEY.json and KEY.png per row, in id order (webdataset's sample layout)."""
    names_by_label = rows.names_by_label()
    extra = {name: np.asarray(col).tolist() for name, col in rows.extra.items()}
    parts: list[bytes] = []
    for i, (sample_id, lab) in enumerate(zip(rows.ids.tolist(), rows.labels.tolist(),
                                             strict=True)):  # fmt: skip
        key = sample_key(sample_id)
        record = {"id": sample_id, "label": lab, "label_name": names_by_label[lab]}
        record.update((name, values[i]) for name, values in extra.items())
        _tar_member(parts, f"{key}.cls", str(lab).encode())
        _tar_member(parts, f"{key}.json", json.dumps(record).encode())
        _tar_member(parts, f"{key}.png", encode_png(rows.images[i]))
    size = sum(len(p) for p in parts) + 2 * _TAR_BLOCK  # the end: two zero blocks
    parts.append(b"\0" * (2 * _TAR_BLOCK + (-size % _TAR_RECORD)))
    name = str(FORMATS["webdataset"].shard_file(rows.index))
    return _write_buffer(out, name, memoryview(b"".join(parts)))


def _write_imagefolder(out: Path, rows: ShardRows, encoding: str) -> WrittenShard:
    """CLASS/ID.png per row; the shard's sha256 covers the lines "PATH\\tSHA256(PNG)\\n"."""
    names_by_label = rows.names_by_label()
    digest = hashlib.sha256()
    total = 0
    for sample_id, lab, img in zip(
        rows.ids.tolist(), rows.labels.tolist(), rows.images, strict=True
    ):
        rel = image_path(lab, names_by_label[lab], sample_id, rows.class_names)
        data = encode_png(img)
        write_bytes_atomic(out / rel, data)
        digest.update(f"{rel}\t{hashlib.sha256(data).hexdigest()}\n".encode())
        total += len(data)
    return WrittenShard(file=None, sha256=digest.hexdigest(), bytes=total)


_WRITERS: dict[str, Callable[[Path, ShardRows, str], WrittenShard]] = {
    "parquet": _write_parquet,
    "npz": _write_npz,
    "imagefolder": _write_imagefolder,
    "webdataset": _write_webdataset,
}


def imagefolder_digest(
    out: Path, ids: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> str | None:
    """The shard hash of existing imagefolder files, or None if one is missing."""
    digest = hashlib.sha256()
    for sample_id, lab in zip(ids.tolist(), labels.tolist(), strict=True):
        rel = image_path(lab, label_name(lab, class_names), sample_id, class_names)
        path = out / rel
        if not path.is_file():
            return None
        digest.update(f"{rel}\t{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def write_labels_csv(
    out: Path,
    shards: Iterable[tuple[Sequence, ...]],
    class_names: Sequence[str],
    extra: Sequence[str] = (),
) -> None:
    """labels.csv of an imagefolder dataset: id,label,label_name,path, then the `extra`
    columns, for each (ids, labels, *one sequence per extra column)."""
    with atomic_path(out / LABELS_CSV) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*LABELS_CSV_COLUMNS, *extra])
        for ids, labels, *values in shards:
            for i, (sample_id, label) in enumerate(zip(ids.tolist(), labels.tolist(), strict=True)):
                name = label_name(label, class_names)
                path = image_path(label, name, sample_id, class_names)
                writer.writerow([sample_id, label, name, path, *(v[i] for v in values)])
