"""Write-then-rename helpers, so a killed process never leaves a half-written artifact.

Every artifact of every stage (weights, decoder.onnx, shards, PNGs, manifests, reports) is
written under a temporary name beside its final path, `.NAME.XXXXXXXX.tmp`, then renamed onto
it. The leading dot and the `.tmp` suffix let `sweep_temp_files` find what a killed writer left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
WRITE_CHUNK = 1 << 20
_TOKEN_BYTES = 4  # the random part of a temp name: 8 hex digits
_TEMP_NAME = re.compile(rf"\.(?P<name>.+)\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}{re.escape(TMP_SUFFIX)}")


def final_name(name: str) -> str | None:
    """NAME when `name` is a temp name `.NAME.XXXXXXXX.tmp` that atomic_path makes, else None."""
    match = _TEMP_NAME.fullmatch(name)
    return match["name"] if match else None


def _new_temp(final: Path) -> Path:
    """Create an empty, unique temp file beside `final` (mode 0666 minus the umask)."""
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(_TOKEN_BYTES)}{TMP_SUFFIX}")
        try:
            # Unique, not one fixed name per target: an actor Ray thinks dead but still running
            # and its replacement may write the same shard at once; each renames whole bytes.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the body succeeds."""
    final = Path(final)
    if not final.parent.is_dir():  # a stat, not a failing mkdir: imagefolder writes many files
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(final)  # a write to an open file names none: say which (full disk)
        raise


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        # In 1 MiB pieces: one 12 MiB write() into a new ext4 file took 28-32 ms of kernel CPU
        # in some runs here (3-4 ms in others); 1 MiB pieces took 3-5 ms in every run
        # (bench/write.py).
        for start in range(0, view.nbytes, WRITE_CHUNK):
            fh.write(view[start : start + WRITE_CHUNK])


def write_json_atomic(final: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode())


def sweep_temp_files(root: str | os.PathLike[str]) -> int:
    """Remove the temp files killed writers left under `root`; returns how many."""
    removed = 0
    for path in Path(root).rglob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def probe_writable(path: str | os.PathLike[str], name: str | None = None) -> None:
    """Prove that directory `path` (existing or still to be made) can be written, or raise
    VaegenError("cannot write NAME: why"). Probes its nearest existing ancestor; leaves nothing.
    """
    from vaegen.errors import VaegenError

    path = Path(path)
    name = name or f"to {path}"
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise VaegenError(f"cannot write {name}: {probe} is not a directory")
    try:
        _new_temp(probe / ".vaegen-probe").unlink()
    except OSError as exc:
        raise VaegenError(f"cannot write {name}: {exc.strerror or exc}") from None


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and prove it is writable, or raise VaegenError."""
    from vaegen.errors import VaegenError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaegenError(f"cannot write to {path}: {exc.strerror or exc}") from None
    probe_writable(path)
    return path
