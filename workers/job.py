"""`run_generation`: check, plan, run the actor pool, keep the manifest current, finish.

Actors write their shard files themselves; only small records flow back, and the driver folds
them, in completion order, into the manifest, the metrics and the progress bar. Peak memory
therefore depends on the shard size; --num-samples adds only the manifest's entry per shard.
The parts: workers.outdir (what --out may hold), workers.layout (pool size), workers.pool (the
actors), workers.manifest.

Plain Ray actors rather than Ray Data's `map_batches`: this job reads no input blocks and
returns no data, and on 2 CPUs Ray Data's executor cost a fixed 1.3 s per job (2.9 s for a
process's first job) and 15% of the steady rate (workers/README.md has the figures).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vaegen import telemetry
from vaegen.atomic import sweep_temp_files
from vaegen.dataset_card import write_card
from vaegen.dataset_format import JUDGE_CONFIDENCE
from vaegen.dirlock import hold_directory
from vaegen.errors import VaegenError
from workers.envfail import told
from workers.layout import ActorLayout, check_gpu_decoder, check_local_provider, cluster_layout
from workers.manifest import ManifestSaver, ShardRecord, add_shard, new_manifest, write_manifest
from workers.options import GenerateOptions
from workers.outdir import check_output, intact_shards, prepare_output
from workers.pool import ActorPool, user_error
from workers.sampler import SamplerConfig
from workers.spec import JobSpec, ShardPlan, plan_shards, shard_label_sequence
from workers.verify import check_complete
from workers.writers import write_labels_csv

SHARD_GATE_ENV = "VAEGEN_TEST_SHARD_GATE"  # test hook: after its first shard, an actor waits
PUSH_JOB = "vaegen_generate"
# After a user error, how long the shards in flight may take to finish: an actor is then never
# killed halfway through writing one.
DRAIN_S = 120.0


class _Bar(Protocol):
    def advance(self, amount: float = 1.0, info: str = "") -> None: ...


@dataclass(frozen=True)
class _Job:
    """One running job: what it makes, where, how, and on which pool."""

    spec: JobSpec
    out: Path
    options: GenerateOptions
    layout: ActorLayout


@dataclass(frozen=True)
class _Files:
    """The bytes the actors run: the decoder, and the judge with --judge."""

    model: bytes
    judge: bytes | None = None


def run_generation(
    spec: JobSpec, out: str | os.PathLike[str], options: GenerateOptions | None = None
) -> dict:
    """Generate the dataset `spec` describes into `out`; returns the final manifest.

    Every check runs before `out` is created: a bad spec, output path, GPU request or metrics
    port raises VaegenError and leaves nothing behind.
    """
    options = options or GenerateOptions()
    out = Path(out)
    with hold_directory(out, "vaegen generate", label=f"--out {out}"):  # one writer per --out
        return _run_locked(spec, out, options)


def _run_locked(spec: JobSpec, out: Path, options: GenerateOptions) -> dict:
    existing = check_output(out, spec, options)
    check_gpu_decoder(spec.decoder, options)
    check_local_provider(options)
    files = _read_files(spec)
    with _metrics_server(options):
        from vaegen.raycluster import init_ray

        init_ray(options.ray_address)
        job = _Job(spec, out, options, cluster_layout(options))
        prepare_output(out, options.overwrite)
        manifest = _generate(job, existing, files)
        if options.metrics_port is not None and options.metrics_linger > 0:
            time.sleep(options.metrics_linger)  # lets a scraper read the final values
    return manifest


def _read_files(spec: JobSpec) -> _Files:
    model = _read_checked("model", spec.decoder.path, spec.decoder.sha256)
    if spec.judge is None:
        return _Files(model)
    return _Files(model, _read_checked("judge", spec.judge.path, spec.judge.sha256))


def _read_checked(what: str, path: str, sha256: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VaegenError(f"cannot read {what} {path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise VaegenError(f"{what} {path} changed since it was validated")
    return data


@contextlib.contextmanager
def _metrics_server(options: GenerateOptions) -> Iterator[None]:
    if options.metrics_port is None:
        yield
        return
    server = telemetry.serve_metrics(options.metrics_port, options.metrics_host)
    try:
        yield
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]


def _generate(job: _Job, existing: dict | None, files: _Files) -> dict:
    started = time.monotonic()
    plans = plan_shards(job.spec)
    manifest = new_manifest(job.spec)
    for record in intact_shards(job.out, existing, plans, job.spec):
        add_shard(manifest, record)
        telemetry.GENERATE_SHARDS.labels(status="skipped").inc()
    done = {s["index"] for s in manifest["shards"]}
    pending = [p for p in plans if p.index not in done]
    manifest["execution"] = {
        **asdict(job.layout),
        "ray_address": job.options.ray_address or os.environ.get("RAY_ADDRESS") or "local",
        "resumed_shards": len(done),
    }
    if "judge" in manifest:
        manifest["judge"]["min_acceptance"] = job.options.min_acceptance
    write_manifest(job.out, manifest)
    with _progress(job.options.show_progress, job.spec.num_samples) as bar:
        if manifest["num_rows"]:
            bar.advance(manifest["num_rows"], info="resumed")
        generated = _run_pool(job, manifest, pending, files, bar) if pending else 0
    _finish(job, manifest, plans, generated, time.monotonic() - started)
    return manifest


def _sampler_config(job: _Job) -> SamplerConfig:
    decoder = job.spec.decoder
    return SamplerConfig(
        out_dir=str(job.out.resolve()),
        fmt=job.spec.format,
        encoding=job.spec.encoding,
        batch_size=job.spec.batch_size,
        latent_dim=decoder.latent_dim,
        image_shape=decoder.image_shape,
        class_names=decoder.class_names,
        conditional=decoder.conditional,
        gpu=job.layout.num_gpus > 0,
        threads=job.layout.threads,
        io_binding=job.options.io_binding,
        shard_gate=os.environ.get(SHARD_GATE_ENV, ""),
        temperature=job.spec.temperature,
        min_confidence=job.spec.min_confidence,
        min_acceptance=job.options.min_acceptance,
    )


def _run_pool(job: _Job, manifest: dict, pending: list[ShardPlan], files: _Files, bar: _Bar) -> int:
    """Run the pending shards; fold each record in as it comes. Returns the rows generated."""
    import ray

    fold = _Fold(manifest, ManifestSaver(job.out, manifest), bar)
    judge_ref = None if files.judge is None else ray.put(files.judge)
    pool = ActorPool(
        ray.put(files.model), _sampler_config(job), job.layout, pending, job.options.worker_wait,
        judge_ref,
    )  # fmt: skip
    try:
        with pool:
            try:
                for record in pool.records():
                    fold(record)
            except Exception as exc:
                refusal = user_error(exc)
                if refusal is None:
                    raise
                for record in pool.drain(DRAIN_S):  # finished shards are kept for --resume
                    fold(record)
                raise told(refusal, manifest) from None
    except Exception:
        fold.saver.save(force=True)  # keep every finished shard for --resume
        telemetry.GENERATE_SHARDS.labels(status="failed").inc()
        sweep_temp_files(job.out)  # what a killed actor's writer left
        raise
    return fold.generated


class _Fold:
    """Folds each shard record into the manifest, the metrics and the progress bar."""

    def __init__(self, manifest: dict, saver: ManifestSaver, bar: _Bar) -> None:
        self.manifest, self.saver, self.bar = manifest, saver, bar
        self.generated, self.t0 = 0, time.monotonic()

    def __call__(self, record: ShardRecord) -> None:
        add_shard(self.manifest, record)
        self.saver.save()
        _observe(record)
        self.generated += record.rows
        rate = self.generated / max(time.monotonic() - self.t0, 1e-9)
        telemetry.GENERATE_SAMPLES_PER_SECOND.set(rate)
        info = f"{len(self.manifest['shards'])}/{self.manifest['num_shards']}"
        self.bar.advance(record.rows, info=info)


def _observe(record: ShardRecord) -> None:
    for label, n in record.class_counts.items():
        telemetry.GENERATED_SAMPLES.labels(label=label).inc(n)
    for seconds in record.batch_seconds:
        telemetry.GENERATE_BATCH_SECONDS.observe(seconds)
    telemetry.GENERATE_SHARDS.labels(status="written").inc()


def _finish(
    job: _Job, manifest: dict, plans: list[ShardPlan], generated: int, seconds: float
) -> None:
    missing = len(plans) - len(manifest["shards"])
    if missing:  # never call a short dataset complete
        raise RuntimeError(f"{missing} shards were not written; rerun with --resume")
    if job.spec.format == "imagefolder":
        _write_labels_csv(job, plans, manifest["shards"])
    check_complete(job.out, manifest)  # every listed shard on disk, or exit 1 for --resume
    manifest["complete"] = True
    manifest["execution"]["seconds"] = round(seconds, 3)
    manifest["execution"]["generated_samples"] = generated
    write_manifest(job.out, manifest)
    write_card(job.out)  # DATASET/README.md, from the complete manifest
    sweep_temp_files(job.out)
    if job.options.pushgateway:
        try:
            telemetry.push_metrics(job.options.pushgateway, PUSH_JOB, {"dataset": job.out.name})
        except OSError as exc:
            # The dataset is done and intact; a dashboard hiccup must not fail the job.
            print(f"warning: could not push metrics to {job.options.pushgateway}: {exc}",
                  file=sys.stderr)  # fmt: skip


def _write_labels_csv(job: _Job, plans: list[ShardPlan], shards: list[dict]) -> None:
    """labels.csv from the plans; with --judge, each row's confidence from its shard entry."""
    judged = job.spec.judge is not None
    rows = (
        (
            np.arange(plan.first_id, plan.first_id + plan.rows, dtype=np.int64),
            shard_label_sequence(plan),
            *([shard["judge"]["confidence"]] if judged else []),
        )
        for plan, shard in zip(plans, shards, strict=True)
    )
    extra = [JUDGE_CONFIDENCE] if judged else []
    write_labels_csv(job.out, rows, job.spec.decoder.class_names, extra)


class _NoProgress:
    def advance(self, amount: float = 1.0, info: str = "") -> None:
        pass


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[_Bar]:
    if not show:
        yield _NoProgress()
        return
    from vaegen.progress import progress

    with progress("generate", total=total) as bar:
        yield bar
