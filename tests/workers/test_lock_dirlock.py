"""vaegen.dirlock beyond tests/vaegen/test_dirlock.py: a lock beside a folder published by
rename, and a heartbeat that survives one unreadable read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vaegen.dirlock import (
    LOCK_NAME,
    DirectoryLocked,
    hold_directory,
    hold_published,
    is_lock_file,
)


def test_a_published_folders_lock_lives_beside_it(tmp_path: Path) -> None:
    folder = tmp_path / "parent" / "judge"
    with hold_published(folder, "vaegen judge") as lock:
        assert lock.path == tmp_path / "parent" / f".judge{LOCK_NAME}"
        assert not folder.exists() and is_lock_file(lock.path.name)
        with pytest.raises(DirectoryLocked, match=f"{folder} is in use by vaegen judge"):
            with hold_published(folder, "second"):
                pass
        staged = tmp_path / "parent" / ".judge.stage"
        staged.mkdir()
        (staged / "judge.onnx").write_bytes(b"x")
        os.replace(staged, folder)  # the publish: the lock is untouched
        assert lock.beat() and json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.lost and sorted(p.name for p in folder.parent.iterdir()) == ["judge"]


def test_a_refused_publish_leaves_no_folder(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "judge"
    with hold_published(folder, "first"), pytest.raises(DirectoryLocked):
        with hold_published(folder, "second"):
            pass
    assert not (tmp_path / "new").exists()


def test_one_unreadable_read_is_not_a_takeover(tmp_path: Path) -> None:
    with hold_directory(tmp_path, "x", heartbeat_s=3600) as lock:
        mine = lock.path.read_text()
        lock.path.write_text("{half")  # what an NFS client may see for a moment
        assert lock.beat() and not lock.lost
        lock.path.write_text(mine)
        assert lock.beat()
        lock.path.write_text(json.dumps({**json.loads(mine), "token": "someone else"}))
        assert not lock.beat() and lock.lost
    assert (tmp_path / LOCK_NAME).exists()  # the taker's lock stays


def test_lock_files_are_recognised() -> None:
    assert is_lock_file(LOCK_NAME) and is_lock_file(f"{LOCK_NAME}.stale.0123abcd")
    assert is_lock_file(f".judge{LOCK_NAME}") and not is_lock_file("part-00000.parquet")
