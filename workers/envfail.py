"""A full disk, a lost permission or a read-only file system, told plainly.

Such a failure inside an actor comes back as Ray's task error around the OSError; the job keeps
every finished shard (its manifest is saved, temp files swept) and ends with exit 1 and one line:
the cause, the file, how many shards are finished, and that --resume continues.
"""

from __future__ import annotations

import errno
from pathlib import Path

from vaegen.atomic import final_name
from vaegen.errors import VaegenError

CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


class EnvironmentFailure(VaegenError):
    """The machine, not the input: exit 1 (the job can be resumed as it is once fixed)."""

    exit_code = 1

    def __init__(self, cause: str, path: str, progress: str = "") -> None:
        super().__init__(f"{cause} writing {path}{progress}")
        self.cause_text, self.path = cause, path

    def with_progress(self, done: int, total: int) -> EnvironmentFailure:
        progress = (
            f": {done} of {total} shards are finished and kept; "
            "once that is fixed, rerun with --resume to continue"
        )
        return EnvironmentFailure(self.cause_text, self.path, progress)


def environment_failure(exc: BaseException) -> EnvironmentFailure | None:
    """The OSError behind an actor's failure, if it is the environment's; else None."""
    cause = getattr(exc, "cause", None) or exc
    if not isinstance(cause, OSError) or cause.errno not in CAUSES:
        return None
    return EnvironmentFailure(CAUSES[cause.errno], _final(cause.filename))


def _final(filename: object) -> str:
    """The file being written: the final name, not atomic_path's temporary one."""
    if not filename:
        return "the dataset"
    path = Path(str(filename))
    final = final_name(path.name)
    return str(path.with_name(final)) if final else str(path)


def told(error: VaegenError, manifest: dict) -> VaegenError:
    """`error`, with the finished-shard count when it is an EnvironmentFailure."""
    if isinstance(error, EnvironmentFailure):
        return error.with_progress(len(manifest["shards"]), manifest["num_shards"])
    return error
