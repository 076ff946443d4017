"""DATASET/manifest.json: read, write (atomically), check a resume against it, verify shards.

Format (manifest_version 1)::

    {
      "kind": "vaegen-dataset", "manifest_version": 1, "vaegen_version": "0.1.0",
      "complete": false,                 # true once every shard is written
      "spec": {"model_sha256", "num_samples", "class_counts": {"LABEL": n}, "seed",
               "shard_size", "batch_size", "format", "encoding",
               "temperature", "judge_sha256", "min_confidence"},   # resume must match this
      "model": {"path", "sha256", "latent_dim", "num_classes", "class_names", "image_shape",
                "likelihood", "vaegen_version", "source_sha256", "precision", "quantization"},
      "image_shape": [C, H, W], "image_dtype": "uint8", "class_names": [...],
      "num_shards": K,
      "num_rows": rows in the finished shards,
      "class_counts": {"LABEL": rows in the finished shards},   # == spec's once complete
      "shards": [                        # finished shards only, by index
        {"index", "file", "rows", "first_id", "sha256", "bytes", "seed",
         "class_counts": {"LABEL": n}, "provider", "node": {"hostname", "node_id", "ip"},
         "pid", "seconds",
         "judge": {"drawn", "accepted", "acceptance_rate": {"LABEL": x},   # --judge only
                   "confidence": [per row]}}                         # imagefolder only
      ],
      "judge": {"path", "sha256", "min_confidence", "min_acceptance", "test_accuracy",
                "dataset", "drawn", "accepted", "acceptance_rate"},  # --judge only; totals
      "execution": {...}                 # how the last run ran (provider, workers, ...)
    }

Labels are keys as strings: class indices, or "-1" for a plain VAE. A shard's "seed" alone
reproduces its stream: numpy.random.Generator(numpy.random.Philox(seed)). The spec's
temperature, judge_sha256 and min_confidence appear only when they differ from
workers.spec.SPEC_DEFAULTS (T = 1, no judge): a manifest without them means those.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaegen import __version__
from vaegen.atomic import write_json_atomic
from vaegen.contracts import sha256_file
from vaegen.dataset_format import IMAGE_DTYPE, MANIFEST, MANIFEST_KIND, MANIFEST_VERSION
from vaegen.errors import VaegenError
from workers.judge_filter import rates
from workers.spec import SPEC_DEFAULTS, JobSpec, ShardPlan, shard_label_sequence
from workers.writers import imagefolder_digest


@dataclass(frozen=True)
class ShardRecord:
    """What an actor returns for the shard it wrote: a manifest entry, plus its batch timings."""

    index: int
    file: str | None
    rows: int
    first_id: int
    sha256: str
    bytes: int
    seed: int
    class_counts: dict[str, int]
    provider: str
    node: dict[str, str]
    pid: int
    seconds: float
    batch_seconds: tuple[float, ...] = ()  # for the metrics; not kept in the manifest
    judge: dict | None = None  # --judge: drawn, accepted, acceptance_rate (+ imagefolder's rows)

    def entry(self) -> dict:
        """The manifest's entry for this shard."""
        entry = dataclasses.asdict(self)
        del entry["batch_seconds"]
        if entry["judge"] is None:
            del entry["judge"]
        return entry

    @classmethod
    def from_entry(cls, entry: object) -> ShardRecord | None:
        """A manifest entry read back, or None if it is not one (a resume redoes that shard)."""
        try:
            return cls(**entry)  # type: ignore[arg-type]
        except TypeError:
            return None


def new_manifest(spec: JobSpec) -> dict:
    return {
        "kind": MANIFEST_KIND,
        "manifest_version": MANIFEST_VERSION,
        "vaegen_version": __version__,
        "complete": False,
        "spec": spec.to_json(),
        "model": {"path": spec.decoder.path, **spec.decoder.to_json()},
        "image_shape": list(spec.decoder.image_shape),
        "image_dtype": IMAGE_DTYPE,
        "class_names": list(spec.decoder.class_names),
        "num_shards": spec.num_shards,
        "num_rows": 0,
        "class_counts": {},
        "shards": [],
        **({"judge": _judge_block(spec)} if spec.judge is not None else {}),
        "execution": {},
    }


def _judge_block(spec: JobSpec) -> dict:
    return {
        **spec.judge.to_json(),  # type: ignore[union-attr]
        "min_confidence": spec.min_confidence,
        "drawn": {},
        "accepted": {},
        "acceptance_rate": {},
    }


# Spec fields that change speed, never bytes: a resume may change them.
PERFORMANCE_ONLY = ("batch_size",)


def check_resumable(manifest: dict, spec: JobSpec, out: Path) -> None:
    """A resume must repeat the same job: same model bytes and every other spec field equal."""
    old = manifest.get("spec", {})
    new = spec.to_json()
    if old.get("model_sha256") != new["model_sha256"]:
        raise VaegenError(
            f"{out} was generated from another model (sha256 {old.get('model_sha256')!s:.12}...,"
            f" this one {new['model_sha256']:.12}...); use --overwrite or another --out"
        )
    keys = [*new, *(k for k in old if k not in new)]
    was = {k: old.get(k, SPEC_DEFAULTS.get(k)) for k in keys}
    now = {k: new.get(k, SPEC_DEFAULTS.get(k)) for k in keys}
    diffs = [k for k in keys if k not in PERFORMANCE_ONLY and was[k] != now[k]]
    if diffs:
        detail = ", ".join(f"{k}: {was[k]!r} -> {now[k]!r}" for k in diffs)
        raise VaegenError(f"cannot resume {out} with a different spec ({detail})")


def shard_is_intact(out: Path, record: ShardRecord, plan: ShardPlan, spec: JobSpec) -> bool:
    """Recompute a finished shard's sha256 from disk and compare with its record."""
    try:
        if spec.format == "imagefolder":
            labels = shard_label_sequence(plan)
            ids = np.arange(plan.first_id, plan.first_id + plan.rows, dtype=np.int64)
            digest = imagefolder_digest(out, ids, labels, spec.decoder.class_names)
        else:
            path = out / str(record.file)
            digest = sha256_file(path) if path.is_file() else None
    except OSError:
        return False
    return (
        digest is not None
        and digest == record.sha256
        and record.rows == plan.rows
        and _judge_intact(record, plan, spec)
    )


def _judge_intact(record: ShardRecord, plan: ShardPlan, spec: JobSpec) -> bool:
    """A judged shard's entry holds its judge summary (and imagefolder's per-row confidences,
    which labels.csv is written from)."""
    if spec.judge is None:
        return True
    if record.judge is None:
        return False
    return spec.format != "imagefolder" or len(record.judge.get("confidence") or ()) == plan.rows


def add_shard(manifest: dict, record: ShardRecord) -> None:
    """Insert (or replace) a finished shard and update the totals.

    O(log K) to find the place and O(classes) for the totals, never a pass over all K shards:
    a job of 100k shards calls this 100k times.
    """
    entry = record.entry()
    shards = manifest["shards"]
    at = bisect.bisect_left(shards, entry["index"], key=lambda s: s["index"])
    if at < len(shards) and shards[at]["index"] == entry["index"]:
        _count(manifest, shards[at], -1)
        shards[at] = entry
    else:
        shards.insert(at, entry)
    _count(manifest, entry, +1)


def _count(manifest: dict, shard: dict, sign: int) -> None:
    counts = manifest["class_counts"]
    for label, n in shard["class_counts"].items():
        counts[label] = counts.get(label, 0) + sign * n
    manifest["class_counts"] = {k: counts[k] for k in sorted(counts, key=int) if counts[k]}
    manifest["num_rows"] += sign * shard["rows"]
    if "judge" in shard and "judge" in manifest:
        _count_judged(manifest["judge"], shard["judge"], sign)


def _count_judged(total: dict, shard: dict, sign: int) -> None:
    """The judge's totals over the finished shards (O(classes), like the class counts)."""
    for key in ("drawn", "accepted"):
        for label, n in shard[key].items():
            total[key][label] = total[key].get(label, 0) + sign * n
    labels = sorted(total["drawn"], key=int)
    for key in ("drawn", "accepted"):
        total[key] = {label: total[key].get(label, 0) for label in labels}
    drawn, accepted = total["drawn"].values(), total["accepted"].values()
    total["acceptance_rate"] = dict(zip(labels, rates(list(accepted), list(drawn)), strict=True))


def write_manifest(out: Path, manifest: dict) -> None:
    write_json_atomic(out / MANIFEST, manifest, indent=1)


class ManifestSaver:
    """Rewrites the manifest after a shard, unless rewriting would cost > 5% of the time.

    A small manifest takes a millisecond, so every shard is recorded at once. With tens of
    thousands of shards each rewrite grows, and the writes are spaced out; a shard finished but
    not yet recorded when the driver dies is regenerated by --resume, with the same bytes.
    """

    def __init__(self, out: Path, manifest: dict) -> None:
        self.out, self.manifest = out, manifest
        self.last, self.cost = 0.0, 0.0

    def save(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < 20 * self.cost:
            return
        t0 = time.monotonic()
        write_manifest(self.out, self.manifest)
        self.last = time.monotonic()
        self.cost = self.last - t0
