"""Training in this process: Ray Train's local mode, for one worker on the machine vaegen runs on.

With no cluster to join (no --ray-address, no RAY_ADDRESS, no Ray already connected), no
--workers and no --gpu, the default layout is one worker using this machine's cores. Started the
distributed way, that one worker sits behind eight Python processes (GCS, raylet, agents, the
Train controller, its helper actors, the worker actor): 15-19 s of fixed time on 2 cores and
epochs 12-20% slower than a plain loop (bench/train.py). Ray Train's local mode
(`ScalingConfig(num_workers=0)`) runs the same train function here, with the same `ray.train`
calls, but persists no checkpoint and restarts nothing. This module adds both, so nothing the
result needs is skipped: each epoch's checkpoint is written under RUN/checkpoints/local/ (the
loop calls `save_checkpoint`), and a failed attempt restarts from the newest checkpoint, up to
--max-failures times. `--workers N` (1 included) still runs N Ray Train worker actors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCAL_DIR = "local"  # under RUN/checkpoints/, beside Ray Train's own run folder
# A checkpoint folder's {"epoch": N, "metrics": {...}} (trainer.loop.CHECKPOINT_STATE), named
# here so the driver can find checkpoints without importing torch.
STATE_FILE = "state.json"
PREFIX = "checkpoint_epoch_"


def checkpoint_epoch(directory: Path) -> int | None:
    """The epoch a checkpoint folder holds; None when its state is missing or unreadable (a
    folder pruned since, or one Ray Train or this module never finished)."""
    try:
        return int(json.loads((directory / STATE_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wanted(ray_address: str | None, workers: int, gpu: bool) -> bool:
    """Whether this run trains in process: nothing to join, one worker, no GPU asked for."""
    if ray_address or os.environ.get("RAY_ADDRESS") or workers != 0 or gpu:
        return False
    import ray

    return not ray.is_initialized()  # a caller that started or joined a Ray keeps using it


def save_checkpoint(root: Path, epoch: int, write: Callable[[Path], None], keep: int) -> Path:
    """`write` fills a new folder, renamed into place when complete; the oldest beyond `keep`
    go. Returns the checkpoint's folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{epoch:06d}"
    staging = root / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write(staging)
    shutil.rmtree(final, ignore_errors=True)  # a restarted attempt redoing this epoch
    staging.rename(final)
    done = sorted(p for p in root.iterdir() if p.name.startswith(PREFIX))
    for old in done[: max(0, len(done) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The checkpoint folder with the highest epoch under RUN/checkpoints/, whichever layout
    wrote it (Ray Train's run folder or this module's): a run may resume in the other one."""
    best: tuple[int, float, Path] | None = None
    for state in checkpoints.glob(f"**/{STATE_FILE}"):
        if any(part.startswith(".") for part in state.relative_to(checkpoints).parts):
            continue  # a folder still being written
        epoch = checkpoint_epoch(state.parent)
        if epoch is None:
            continue
        key = (epoch, state.stat().st_mtime, state.parent)
        best = key if best is None or key[:2] > best[:2] else best
    return None if best is None else best[2]


def fit_in_process(
    make_trainer: Callable[[str | None], Any],
    checkpoints: Path,
    max_failures: int,
    say: Callable[[str], None],
) -> Any:
    """Run `make_trainer(resume_from).fit()` here; after a failure, again from the newest
    checkpoint, `max_failures` times (-1: without limit), as Ray Train restarts workers."""
    quiet = logging.getLogger("ray.train")  # local mode logs every report at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    failures = 0
    try:
        while True:
            latest = latest_checkpoint(checkpoints)
            try:
                return make_trainer(None if latest is None else str(latest)).fit()
            except Exception as exc:
                if 0 <= max_failures <= failures:
                    raise
                failures += 1
                limit = "no limit" if max_failures < 0 else f"--max-failures {max_failures}"
                say(
                    f"training failed ({type(exc).__name__}: {exc}); restarting from the newest "
                    f"checkpoint (failure {failures}, {limit})"
                )
    finally:
        quiet.setLevel(level)
