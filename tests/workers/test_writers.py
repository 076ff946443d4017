"""Shard writers: byte-stable output, PNG round trips, readable layouts, temp files swept."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vaegen.atomic import sweep_temp_files
from vaegen.contracts import sha256_file
from vaegen.dataset_format import decode_png, encode_png
from vaegen.dataset_reader import read_shard
from workers.writers import imagefolder_digest, write_shard

NAMES = ("zero", "one/two", "three")


def _rows(n: int = 50, shape: tuple[int, int, int] = (1, 8, 8)):  # noqa: ANN202
    rng = np.random.default_rng(0)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    labels = rng.integers(0, 3, n).astype(np.int64)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return ids, labels, images


def _write(out: Path, fmt: str, encoding: str = "raw", shape=(1, 8, 8)):  # noqa: ANN001, ANN202
    ids, labels, images = _rows(shape=shape)
    out.mkdir(parents=True, exist_ok=True)
    written = write_shard(
        out, fmt=fmt, encoding=encoding, index=3, ids=ids, labels=labels, images=images,
        class_names=NAMES,
    )  # fmt: skip
    return written, ids, labels, images


def test_parquet_raw_round_trip_and_schema(tmp_path: Path) -> None:
    written, ids, labels, images = _write(tmp_path, "parquet")
    assert written.file == "part-00003.parquet"
    path = tmp_path / written.file
    assert written.sha256 == sha256_file(path) and written.bytes == path.stat().st_size
    table = pq.read_table(path)
    assert table.schema.field("image").type.byte_width == 64
    assert table.column("label_name").to_pylist() == [NAMES[i] for i in labels]
    got = read_shard(path)
    assert np.array_equal(got.ids, ids) and np.array_equal(got.labels, labels)
    assert np.array_equal(got.images, images)


def test_parquet_bytes_match_a_table_built_by_pa_table_and_datasets(tmp_path: Path) -> None:
    # The writer builds its arrays from buffers (no pandas import); the file must be the very
    # one pyarrow's own constructors give, with the `huggingface` metadata `datasets` writes.
    import json

    import pyarrow as pa
    from datasets import ClassLabel, Features, Image, Value

    for encoding in ("raw", "png"):
        written, ids, labels, images = _write(tmp_path / encoding, "parquet", encoding)
        if encoding == "raw":
            image_col = pa.array([img.tobytes() for img in images], type=pa.binary(64))
            image_feature = Value("fixed_size_binary[64]")
        else:
            pngs = [{"bytes": encode_png(img), "path": None} for img in images]
            image_col = pa.array(pngs, type=Image().pa_type)
            image_feature = Image()
        features = Features(
            id=Value("int64"), label=ClassLabel(names=list(NAMES)),
            label_name=Value("string"), image=image_feature,
        )  # fmt: skip
        meta = {"image_shape": [1, 8, 8], "encoding": encoding, "dtype": "uint8",
                "class_names": list(NAMES)}  # fmt: skip
        table = pa.table(
            {
                "id": pa.array(ids),
                "label": pa.array(labels),
                "label_name": pa.array([NAMES[i] for i in labels]),
                "image": image_col,
            }
        ).replace_schema_metadata({"vaegen": json.dumps(meta), **features.arrow_schema.metadata})
        assert table.schema == features.arrow_schema.with_metadata(table.schema.metadata)
        pq.write_table(
            table, tmp_path / "ref.parquet", row_group_size=16384, compression="snappy",
            use_dictionary=["label_name"], write_statistics=["id", "label"],
        )  # fmt: skip
        assert written.sha256 == sha256_file(tmp_path / "ref.parquet")


def test_parquet_and_npz_bytes_are_stable(tmp_path: Path) -> None:
    for fmt in ("parquet", "npz"):
        a, *_ = _write(tmp_path / "a", fmt)
        b, *_ = _write(tmp_path / "b", fmt)
        assert a.sha256 == b.sha256
        assert (tmp_path / "a" / a.file).read_bytes() == (tmp_path / "b" / b.file).read_bytes()


def test_png_encoding_decodes_to_raw_pixels(tmp_path: Path) -> None:
    for shape in ((1, 8, 8), (3, 5, 7)):
        written, _, _, images = _write(tmp_path / str(shape[0]), "parquet", "png", shape)
        decoded = read_shard(tmp_path / str(shape[0]) / written.file).images
        assert decoded.shape == images.shape and np.array_equal(decoded, images)
    one = images[0]
    assert np.array_equal(decode_png(encode_png(one)), one)
    assert encode_png(one) == encode_png(one.copy())


def test_webdataset_tar_is_deterministic_and_reads_back(tmp_path: Path) -> None:
    import json
    import tarfile

    written, ids, labels, images = _write(tmp_path / "a", "webdataset", "png")
    again, *_ = _write(tmp_path / "b", "webdataset", "png")
    path = tmp_path / "a" / written.file
    assert written.file == "part-00003.tar" and written.sha256 == again.sha256
    assert written.sha256 == sha256_file(path) and written.bytes == path.stat().st_size
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        first = {m.name: tar.extractfile(m).read() for m in members[:3]}
    key = f"{ids[0]:09d}"
    assert [m.name for m in members[:3]] == [f"{key}.cls", f"{key}.json", f"{key}.png"]
    assert len(members) == 3 * len(ids)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }
    assert first[f"{key}.cls"] == str(labels[0]).encode()
    record = {"id": int(ids[0]), "label": int(labels[0]), "label_name": NAMES[labels[0]]}
    assert json.loads(first[f"{key}.json"]) == record
    got = read_shard(path)
    assert np.array_equal(got.ids, ids) and np.array_equal(got.labels, labels)
    assert np.array_equal(got.images, images)


def test_webdataset_tar_is_the_one_tarfile_writes(tmp_path: Path) -> None:
    # The writer builds its USTAR headers itself (tarfile's took half a shard's time): the
    # bytes must be tarfile's own for the same members.
    import io
    import json
    import tarfile

    written, ids, labels, images = _write(tmp_path, "webdataset", "png", shape=(3, 5, 7))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample_id, lab, img in zip(ids.tolist(), labels.tolist(), images, strict=True):
            record = {"id": sample_id, "label": lab, "label_name": NAMES[lab]}
            members = {"cls": str(lab).encode(), "json": json.dumps(record).encode(),
                       "png": encode_png(img)}  # fmt: skip
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{sample_id:09d}.{ext}")
                info.size, info.mode, info.uname, info.gname = len(data), 0o644, "", ""
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / written.file).read_bytes() == buf.getvalue()


def test_npz_loads_with_numpy(tmp_path: Path) -> None:
    written, ids, labels, images = _write(tmp_path, "npz")
    with np.load(tmp_path / written.file) as npz:
        assert sorted(npz.files) == ["id", "images", "label"]
        assert np.array_equal(npz["id"], ids) and np.array_equal(npz["label"], labels)
        assert np.array_equal(npz["images"], images)
    with zipfile.ZipFile(tmp_path / written.file) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_imagefolder_layout_and_digest(tmp_path: Path) -> None:
    written, ids, labels, images = _write(tmp_path, "imagefolder", "png")
    assert written.file is None
    # "one/two" is not a usable folder name: its slash is replaced.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one_two", "three", "zero"]
    first = tmp_path / ["zero", "one_two", "three"][labels[0]] / f"{ids[0]}.png"
    assert np.array_equal(decode_png(first.read_bytes()), images[0])
    assert imagefolder_digest(tmp_path, ids, labels, NAMES) == written.sha256
    first.write_bytes(encode_png(255 - images[0]))
    assert imagefolder_digest(tmp_path, ids, labels, NAMES) != written.sha256
    first.unlink()
    assert imagefolder_digest(tmp_path, ids, labels, NAMES) is None


def test_sweep_removes_only_temp_files(tmp_path: Path) -> None:
    (tmp_path / "c0").mkdir()
    keep = [tmp_path / "part-00000.parquet", tmp_path / "c0" / "1.png"]
    drop = [tmp_path / ".part-00001.parquet.tmp", tmp_path / "c0" / ".2.png.tmp"]
    for path in keep + drop:
        path.write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in drop)


def test_a_png_column_past_2_gib_is_the_users_shard_size() -> None:
    # Parquet's binary column has int32 offsets: a shard's PNGs must stay under 2 GiB. That is
    # the --shard-size the user chose (exit 2, one line), not an internal failure. Zero-strided
    # views stand in for 2 GiB of PNGs without allocating them.
    import pyarrow as pa

    from vaegen.errors import VaegenError
    from workers.writers import _binary_array

    huge = [np.broadcast_to(np.zeros(1, np.uint8), (1 << 30,))] * 2
    with pytest.raises(VaegenError, match="use a smaller --shard-size") as caught:
        _binary_array(huge, pa.binary())
    assert caught.value.exit_code == 2
    assert _binary_array([b"ab", b"c"], pa.binary()).to_pylist() == [b"ab", b"c"]
