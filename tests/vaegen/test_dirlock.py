"""The per-directory lock, with real processes holding it and being SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vaegen.dirlock import LOCK_NAME, DirectoryLocked, hold_directory

HOLDER = textwrap.dedent(
    """
    import sys, time
    from vaegen.dirlock import hold_directory
    with hold_directory(sys.argv[1], "holder-job", heartbeat_s=0.1):
        print("held", flush=True)
        time.sleep(600)
    """
)


def _start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _write_lock(directory: Path, host: str, age_s: float) -> Path:
    path = directory / LOCK_NAME
    holder = {"host": host, "pid": 1, "started": "then", "command": "old", "token": "t0"}
    path.write_text(json.dumps(holder))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(DirectoryLocked) as info, hold_directory(tmp_path, "second"):
            pass
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "holder-job" in message
        assert os.uname().nodename in message
        assert info.value.exit_code == 2
    finally:
        proc.kill()
        proc.wait()


def test_a_sigkilled_holder_does_not_block_the_next_job(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # a SIGKILL leaves the file behind
    with hold_directory(tmp_path, "next") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_another_hosts_lock_is_taken_over_only_once_its_heartbeat_is_stale(
    tmp_path: Path,
) -> None:
    _write_lock(tmp_path, "elsewhere", age_s=1.0)
    with pytest.raises(DirectoryLocked, match="elsewhere"), hold_directory(tmp_path, "x"):
        pass
    _write_lock(tmp_path, "elsewhere", age_s=600.0)
    with hold_directory(tmp_path, "x", stale_s=60.0) as lock:
        assert lock.holder.token in lock.path.read_text()


def test_a_half_written_lock_is_stale_once_old(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    path.write_text("")
    with pytest.raises(DirectoryLocked), hold_directory(tmp_path, "x"):
        pass
    os.utime(path, (time.time() - 600, time.time() - 600))
    with hold_directory(tmp_path, "x"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_heartbeat_touches_the_lock_and_release_spares_a_foreign_lock(tmp_path: Path) -> None:
    with hold_directory(tmp_path, "x", heartbeat_s=0.05) as lock:
        first = lock.path.stat().st_mtime_ns
        os.utime(lock.path, ns=(first - 10**9, first - 10**9))
        deadline = time.monotonic() + 30
        while lock.path.stat().st_mtime_ns <= first - 10**9:
            assert time.monotonic() < deadline, "heartbeat never touched the lock"
            time.sleep(0.02)
        # Someone took the lock over (e.g. after a long freeze): release must not delete it.
        _write_lock(tmp_path, "elsewhere", age_s=0.0)
    assert (tmp_path / LOCK_NAME).exists()
    assert lock.lost
