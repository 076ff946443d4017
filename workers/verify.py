"""Is a dataset what its manifest says? `check_complete` (cheap, before a job calls itself done)
and `verify_dataset` (every byte: `vaegen verify DATASET`, e.g. after copying it elsewhere).

A shard is bad when its file is missing, its size or sha256 differs from its manifest entry, or
its entry's rows, first id or per-class counts differ from the plan the spec makes. Bad shards
are exactly what `vaegen generate --resume` redoes: its resume re-hashes every shard too
(workers.outdir.intact_shards), so the two agree on what needs repair.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaegen.contracts import sha256_file
from vaegen.dataset_reader import load_manifest
from vaegen.errors import InternalFailure, VaegenError
from workers.spec import JobSpec, ShardPlan, plan_shards, shard_label_sequence
from workers.writers import imagefolder_digest

HASH_THREADS = 4  # hashlib releases the GIL: a few threads keep a disk or bucket mount busy


@dataclass(frozen=True)
class BadShard:
    index: int
    name: str  # the file, or "shard N" for imagefolder's per-row files
    why: str  # missing, size, sha256, rows, class counts, not written

    def describe(self) -> str:
        return f"{self.name} ({self.why})"


@dataclass(frozen=True)
class Verdict:
    root: Path
    num_shards: int
    num_rows: int
    complete: bool
    bad: tuple[BadShard, ...]

    @property
    def intact(self) -> bool:
        return self.complete and not self.bad

    def summary(self) -> str:
        if self.intact:
            return (
                f"{self.root}: intact ({self.num_shards} shards, {self.num_rows} rows, "
                "every sha256 checked)"
            )
        if not self.bad:
            return (
                f"{self.root}: every shard intact, but manifest.json is not marked complete; "
                "finish it with `vaegen generate ... --resume`"
            )
        names = ", ".join(b.describe() for b in self.bad[:10])
        more = f" and {len(self.bad) - 10} more" if len(self.bad) > 10 else ""
        return (
            f"{self.root}: {len(self.bad)} of {self.num_shards} shards bad: {names}{more}; "
            "`vaegen generate ... --resume` with the same arguments repairs exactly these"
        )


def check_complete(out: Path, manifest: dict) -> None:
    """Every listed shard file exists with its recorded size; else InternalFailure (exit 1).

    Cheap (a stat per shard): run before a job marks its manifest complete, which it then
    leaves incomplete, so that --resume redoes what is missing.
    """
    bad = [
        f"{entry['file']} ({why})"
        for entry in manifest["shards"]
        if entry.get("file") and (why := _stat_problem(out / entry["file"], entry["bytes"]))
    ]
    if bad:
        raise InternalFailure(
            f"{len(bad)} of {manifest['num_shards']} shards of {out} changed under this job "
            f"({', '.join(bad[:5])}); manifest.json stays incomplete: rerun with --resume"
        )


def _stat_problem(path: Path, size: int) -> str:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return exc.strerror or "unreadable"
    return "" if actual == size else f"size {actual} != {size}"


def verify_dataset(root: str | Path) -> Verdict:
    """Check every shard of DATASET against its manifest (see the module docstring)."""
    root = Path(root)
    manifest = load_manifest(root)
    if manifest is None:
        raise VaegenError(f"{root} is not a vaegen dataset (no manifest.json)")
    plans = {p.index: p for p in plan_shards(_plan_spec(manifest))}
    entries = {e.get("index"): e for e in manifest.get("shards", []) if isinstance(e, dict)}
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        checked = pool.map(lambda i: _check_shard(root, manifest, plans[i], entries.get(i)), plans)
        bad = tuple(b for b in checked if b is not None)
    rows = sum(int(e.get("rows", 0)) for e in entries.values())
    return Verdict(root, len(plans), rows, bool(manifest.get("complete")), bad)


def _plan_spec(manifest: dict) -> JobSpec:
    """The spec fields the shard plan reads; the decoder is not needed to plan."""
    spec = manifest["spec"]
    return JobSpec(
        decoder=None,  # type: ignore[arg-type]
        num_samples=int(spec["num_samples"]),
        class_counts=tuple(sorted((int(k), int(v)) for k, v in spec["class_counts"].items())),
        seed=int(spec["seed"]),
        shard_size=int(spec["shard_size"]),
    )


def _check_shard(
    root: Path, manifest: dict, plan: ShardPlan, entry: dict | None
) -> BadShard | None:
    file = entry.get("file") if entry else None
    name = file or f"shard {plan.index}"
    if entry is None:
        return BadShard(plan.index, name, "not written")
    counts = {str(label): n for label, n in plan.class_counts}
    if entry.get("rows") != plan.rows or entry.get("first_id") != plan.first_id:
        return BadShard(plan.index, name, "rows")
    if entry.get("class_counts") != counts:
        return BadShard(plan.index, name, "class counts")
    if file is None:  # imagefolder: one PNG per row, hashed together
        ids = np.arange(plan.first_id, plan.first_id + plan.rows, dtype=np.int64)
        labels = shard_label_sequence(plan)
        digest = imagefolder_digest(root, ids, labels, manifest.get("class_names") or [])
        why = "missing" if digest is None else ("" if digest == entry["sha256"] else "sha256")
        return BadShard(plan.index, name, why) if why else None
    why = _stat_problem(root / file, entry.get("bytes", -1))
    if not why and sha256_file(root / file) != entry.get("sha256"):
        why = "sha256"
    return BadShard(plan.index, name, why) if why else None
