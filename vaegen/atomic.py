"""Write-then-rename helpers, so a killed process never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the body succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; published artifacts get the usual 0666 minus the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and prove it is writable, or raise VaegenError."""
    from vaegen.errors import VaegenError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
    except OSError as exc:
        raise VaegenError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path
