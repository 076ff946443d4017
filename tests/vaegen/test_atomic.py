"""Temp-then-rename writes, the temp-file sweep and the writable-directory probe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vaegen.atomic import (
    atomic_path,
    ensure_writable_dir,
    probe_writable,
    sweep_temp_files,
    write_bytes_atomic,
)
from vaegen.errors import VaegenError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_body_leaves_neither_file_nor_temp(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "a.bin"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list((tmp_path / "sub").iterdir()) == []
    write_bytes_atomic(final, memoryview(b"x" * 3_000_000))  # several 1 MiB pieces
    assert final.read_bytes() == b"x" * 3_000_000
    assert final.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    assert [p.name for p in final.parent.iterdir()] == ["a.bin"]


def test_two_writers_of_one_file_never_share_a_temp(tmp_path: Path) -> None:
    # A retried shard may be written by two actors at once; each must rename whole bytes.
    final = tmp_path / "part-00000.parquet"
    with atomic_path(final) as first, atomic_path(final) as second:
        assert first != second and first.name.startswith(".part-00000.parquet.")
        first.write_bytes(b"a")
        second.write_bytes(b"b")
    assert final.read_bytes() == b"a"  # the outer body finished last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_sweep_removes_only_temp_files(tmp_path: Path) -> None:
    (tmp_path / "c0").mkdir()
    keep = [tmp_path / "part-00000.parquet", tmp_path / "c0" / "1.png", tmp_path / "x.tmp"]
    drop = [tmp_path / ".part-00001.parquet.1a2b3c4d.tmp", tmp_path / "c0" / ".2.png.tmp"]
    for path in keep + drop:
        path.write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in drop)


def test_probe_proves_writability_and_leaves_nothing(tmp_path: Path) -> None:
    probe_writable(tmp_path / "not" / "yet" / "made")  # the nearest existing ancestor is probed
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VaegenError, match=r"cannot write --out X: .*file is not a directory"):
        probe_writable(blocker / "ds", "--out X")
    with pytest.raises(VaegenError, match="cannot write to"):
        ensure_writable_dir(blocker / "ds")
    assert ensure_writable_dir(tmp_path / "made") == tmp_path / "made"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "made"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(VaegenError, match="Permission denied"):
            probe_writable(locked / "ds")
