"""The output-directory policy: what --out may hold, what --resume keeps, and its preparation.

Every check runs before anything is written: a refused --out is left exactly as it was. The
caller holds --out's lock (vaegen.dirlock) throughout, so the lock file is never "content", and
--overwrite deletes only what vaegen wrote, never while another job writes there.
"""

from __future__ import annotations

import re
from pathlib import Path

from vaegen.atomic import TMP_SUFFIX, probe_writable, sweep_temp_files
from vaegen.dataset_card import CARD
from vaegen.dataset_format import FORMATS, LABELS_CSV, MANIFEST, class_dir
from vaegen.dataset_reader import load_manifest
from vaegen.dirlock import is_lock_file
from vaegen.errors import VaegenError
from workers.manifest import ShardRecord, check_resumable, shard_is_intact
from workers.options import GenerateOptions
from workers.spec import JobSpec, ShardPlan

# part-NNNNN.parquet / .npz / .tar: every shard suffix a format declares.
_SUFFIXES = "|".join(re.escape(f.suffix) for f in FORMATS.values() if f.suffix)
_SHARD = re.compile(rf"part-\d{{5}}({_SUFFIXES})")
_ROW_PNG = re.compile(r"\d+\.png")


def entries(out: Path) -> list[Path]:
    """What `out` holds, its lock aside."""
    return [p for p in out.iterdir() if not is_lock_file(p.name)]


def check_output(out: Path, spec: JobSpec, options: GenerateOptions) -> dict | None:
    """Decide what to do with `out` without writing; returns the manifest to resume, if any."""
    if out.exists() and not out.is_dir():
        raise VaegenError(f"--out {out} exists and is not a directory")
    existing = None
    if out.is_dir() and entries(out):
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
            unknown = [p.name for p in entries(out) if not _ours(p, manifest)]
            if unknown:
                raise VaegenError(
                    f"refusing to overwrite {out}: it holds files vaegen did not write "
                    f"({', '.join(sorted(unknown)[:3])}); move them or choose another --out"
                )
        else:
            raise VaegenError(f"--out {out} is not empty; pass --resume or --overwrite")
    probe_writable(out, f"--out {out}")
    return existing


def _class_dirs(manifest: dict) -> set[str]:
    names = list(manifest.get("class_names") or [])
    labels = [(i, n) for i, n in enumerate(names)] or [(-1, "")]
    return {class_dir(label, name, names) for label, name in labels}


def _ours(path: Path, manifest: dict) -> bool:
    """A top-level entry of a dataset vaegen wrote: its manifest's files or its format's names."""
    name = path.name
    if path.is_dir():
        return name in _class_dirs(manifest) and all(
            _ROW_PNG.fullmatch(p.name) or p.name.endswith(TMP_SUFFIX) for p in path.iterdir()
        )
    listed = {str(s.get("file")) for s in manifest.get("shards", [])}
    return (
        name in listed
        or name in (MANIFEST, CARD, LABELS_CSV)
        or bool(_SHARD.fullmatch(name))
        or (name.startswith(".") and name.endswith(TMP_SUFFIX))
    )


def prepare_output(out: Path, overwrite: bool) -> None:
    """Empty `out` of vaegen's files for --overwrite, create it, and sweep temp files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaegenError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    sweep_temp_files(out)
    manifest = load_manifest(out) if overwrite else None
    if manifest is not None:
        _remove_ours(out, manifest)


def _remove_ours(out: Path, manifest: dict) -> None:
    """Delete the dataset's own files only; the manifest last, so a crash can be redone."""
    for path in entries(out):
        if path.name == MANIFEST or not _ours(path, manifest):
            continue
        if path.is_dir():
            for png in path.iterdir():
                png.unlink()
            path.rmdir()
        else:
            path.unlink()
    (out / MANIFEST).unlink(missing_ok=True)


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
