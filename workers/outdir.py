"""The output-directory policy: what --out may hold, what --resume keeps, and its preparation.

Every check runs before anything is written: a refused --out is left exactly as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vaegen.atomic import probe_writable, sweep_temp_files
from vaegen.dataset_reader import load_manifest
from vaegen.errors import VaegenError
from workers.manifest import ShardRecord, check_resumable, shard_is_intact
from workers.options import GenerateOptions
from workers.spec import JobSpec, ShardPlan


def check_output(out: Path, spec: JobSpec, options: GenerateOptions) -> dict | None:
    """Decide what to do with `out` without writing; returns the manifest to resume, if any."""
    if out.exists() and not out.is_dir():
        raise VaegenError(f"--out {out} exists and is not a directory")
    existing = None
    if out.is_dir() and any(out.iterdir()):
        manifest = load_manifest(out)
        if options.resume:
            if manifest is None:
                raise VaegenError(f"cannot resume {out}: it has no manifest.json")
            check_resumable(manifest, spec, out)
            existing = manifest
        elif options.overwrite:
            if manifest is None:
                raise VaegenError(
                    f"refusing to overwrite {out}: it is not a vaegen dataset (no manifest.json)"
                )
        else:
            raise VaegenError(f"--out {out} is not empty; pass --resume or --overwrite")
    probe_writable(out, f"--out {out}")
    return existing


def prepare_output(out: Path, overwrite: bool) -> None:
    """Empty `out` for --overwrite, create it, and sweep a killed run's temp files."""
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaegenError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    sweep_temp_files(out)


def intact_shards(
    out: Path, existing: dict | None, plans: list[ShardPlan], spec: JobSpec
) -> list[ShardRecord]:
    """The finished shards of a resumed manifest whose files still match their sha256."""
    by_index = {p.index: p for p in plans}
    kept = []
    for entry in (existing or {}).get("shards", []):
        record = ShardRecord.from_entry(entry)
        plan = by_index.get(record.index) if record is not None else None
        if plan is not None and shard_is_intact(out, record, plan, spec):
            kept.append(record)
    return kept
