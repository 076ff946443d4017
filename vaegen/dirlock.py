"""One writer per output directory, on local disks and on shared file systems alike.

`flock`/`fcntl` locks are advisory and not honoured by every NFS, EFS or CephFS mount, so the lock
is a file created with O_CREAT | O_EXCL (atomic on local disks, NFSv3+, EFS and CephFS). It holds
the holder's host, pid, process start time and a random token. While the job runs, a daemon
thread touches the file every `heartbeat_s` seconds and checks the token is still its own.

A lock left by a killed job is taken over without a manual step:
- on the same host, at once, when the recorded process is gone (pid and start time checked, so a
  reused pid does not keep a dead job's lock; only within one pid namespace, since containers
  sharing a volume may also share a host name);
- from another host, once the heartbeat is older than `stale_s` (the holder's machine is gone or
  the process was SIGKILLed; a live holder touches the file far more often than that).
The takeover renames the stale file to a unique name first (one rename wins), checks that it took
the stale holder's file and not a fresh lock, then creates its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vaegen.errors import VaegenError

LOCK_NAME = ".vaegen.lock"
HEARTBEAT_S = 5.0
STALE_S = 60.0


def is_lock_file(name: str) -> bool:
    """The lock, or a stale one moved aside by a takeover: never data, never "unknown"."""
    return name.endswith(LOCK_NAME) or f"{LOCK_NAME}.stale." in name


class DirectoryLocked(VaegenError):
    """Another job writes this directory: exit 2, naming the holder."""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started: str  # ISO time the lock was taken
    command: str
    token: str
    proc_start: str = ""  # the process's start time as the OS records it (pid reuse check)
    pid_ns: str = ""  # the pid namespace: containers may share a host name, never pid numbers

    def describe(self) -> str:
        return f"{self.command} (host {self.host}, pid {self.pid}, since {self.started})"


def _proc_start(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22, counted after the parenthesised command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> LockHolder | None:
    try:
        data = json.loads(path.read_text())
        return LockHolder(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        # Half-written by a holder killed while creating it: a lock nobody can own.
        return LockHolder("?", -1, "?", "?", token="", proc_start="")


def _is_stale(path: Path, holder: LockHolder, stale_s: float) -> bool:
    same_ns = holder.pid_ns == _pid_namespace()
    if holder.host == socket.gethostname() and holder.pid > 0 and same_ns:
        if not _pid_alive(holder.pid):
            return True
        return bool(holder.proc_start) and _proc_start(holder.pid) != holder.proc_start
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > stale_s


def _create(path: Path, holder: LockHolder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(holder), handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _take_over(path: Path, stale: LockHolder) -> None:
    """Move a stale lock aside; if the file moved was in fact a fresh one, put it back."""
    aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another job took it over first; our O_EXCL create decides who wins
    moved = _read_holder(aside)
    if moved is not None and moved.token != stale.token:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


class DirLock:
    """The lock on one directory; use `hold_directory` rather than this class directly.

    `path`: where the lock file lives, by default DIRECTORY/.vaegen.lock.
    """

    def __init__(
        self,
        directory: Path,
        command: str,
        heartbeat_s: float,
        stale_s: float,
        path: Path | None = None,
    ) -> None:
        self.directory = directory
        self.path = path or directory / LOCK_NAME
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.holder = LockHolder(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            command=command,
            token=uuid.uuid4().hex,
            proc_start=_proc_start(os.getpid()),
            pid_ns=_pid_namespace(),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> None:
        for _ in range(3):
            if _create(self.path, self.holder):
                self._start_heartbeat()
                return
            current = _read_holder(self.path)
            if current is None:
                continue
            if current.token == self.holder.token:
                return
            if not _is_stale(self.path, current, self.stale_s):
                raise DirectoryLocked(
                    f"{self.directory} is in use by {current.describe()}; wait for it to end"
                )
            _take_over(self.path, current)
        raise DirectoryLocked(f"{self.directory}: could not take its lock (contended)")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="vaegen-dirlock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.beat():
                return

    def beat(self) -> bool:
        """One heartbeat: touch the lock file; False once it is no longer ours."""
        current = _read_holder(self.path)
        if current is not None and not current.token:
            return True  # unreadable this once (an NFS hiccup): not a sign of a takeover
        if current is None or current.token != self.holder.token:
            self.lost = True  # taken over: the job is told at release; never re-create
            return False
        with contextlib.suppress(OSError):
            os.utime(self.path, None)
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 1)
        current = _read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        else:
            self.lost = True


@contextlib.contextmanager
def hold_directory(
    directory: str | os.PathLike[str],
    command: str,
    heartbeat_s: float = HEARTBEAT_S,
    stale_s: float = STALE_S,
    label: str = "",
) -> Iterator[DirLock]:
    """Create `directory` if needed and hold its lock for the body; DirectoryLocked if busy.

    `label` names the folder in messages (e.g. "--out D"); by default its path.

    The folders this call created are removed again if the body leaves them empty (a command
    refused by a later check leaves nothing behind).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise VaegenError(f"{label or directory} exists and is not a directory")
    created = _make(directory, label)
    with _held(DirLock(directory, command, heartbeat_s, stale_s), created) as lock:
        yield lock


@contextlib.contextmanager
def hold_published(
    folder: str | os.PathLike[str], command: str, heartbeat_s: float = HEARTBEAT_S
) -> Iterator[DirLock]:
    """The lock on a folder that is published whole, by renaming a staged copy onto it.

    A lock inside it would leave with the folder it replaces, so it lives beside it:
    PARENT/.FOLDER.vaegen.lock. Same semantics as `hold_directory`; `folder` is not created.
    """
    folder = Path(folder)
    created = _make(folder.parent, "")
    path = folder.parent / f".{folder.name}{LOCK_NAME}"
    with _held(DirLock(folder, command, heartbeat_s, STALE_S, path=path), created) as lock:
        yield lock


def _make(directory: Path, label: str) -> list[Path]:
    """Create `directory` with its parents; returns the folders created, deepest first."""
    created = _missing_chain(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaegenError(f"cannot write {label or directory}: {exc.strerror or exc}") from None
    return created


@contextlib.contextmanager
def _held(lock: DirLock, created: list[Path]) -> Iterator[DirLock]:
    """Hold `lock` for the body; then remove the folders made for it if they are empty."""
    try:
        lock.acquire()
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield lock
    finally:
        lock.release()
        _remove_created(created)


def _missing_chain(directory: Path) -> list[Path]:
    """`directory` and its ancestors that do not exist yet, deepest first."""
    chain = []
    while not directory.exists() and directory.parent != directory:
        chain.append(directory)
        directory = directory.parent
    return chain


def _remove_created(created: list[Path]) -> None:
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (the command wrote there), or gone: keep the rest
            return
