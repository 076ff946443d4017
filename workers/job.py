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
from vaegen.errors import VaegenError
from workers.layout import ActorLayout, check_local_provider, cluster_layout
from workers.manifest import ManifestSaver, ShardRecord, add_shard, new_manifest, write_manifest
from workers.options import GenerateOptions
from workers.outdir import check_output, intact_shards, prepare_output
from workers.pool import ActorPool, user_error
from workers.sampler import SamplerConfig
from workers.spec import JobSpec, ShardPlan, plan_shards, shard_label_sequence
from workers.writers import write_labels_csv

SHARD_GATE_ENV = "VAEGEN_TEST_SHARD_GATE"  # test hook: after its first shard, an actor waits
PUSH_JOB = "vaegen_generate"


class _Bar(Protocol):
    def advance(self, amount: float = 1.0, info: str = "") -> None: ...


@dataclass(frozen=True)
class _Job:
    """One running job: what it makes, where, how, and on which pool."""

    spec: JobSpec
    out: Path
    options: GenerateOptions
    layout: ActorLayout


def run_generation(
    spec: JobSpec, out: str | os.PathLike[str], options: GenerateOptions | None = None
) -> dict:
    """Generate the dataset `spec` describes into `out`; returns the final manifest.

    Every check runs before `out` is created: a bad spec, output path, GPU request or metrics
    port raises VaegenError and leaves nothing behind.
    """
    options = options or GenerateOptions()
    out = Path(out)
    existing = check_output(out, spec, options)
    check_local_provider(options)
    model = _read_model(spec)
    with _metrics_server(options):
        from vaegen.raycluster import init_ray

        init_ray(options.ray_address)
        job = _Job(spec, out, options, cluster_layout(options))
        prepare_output(out, options.overwrite)
        manifest = _generate(job, existing, model)
        if options.metrics_port is not None and options.metrics_linger > 0:
            time.sleep(options.metrics_linger)  # lets a scraper read the final values
    return manifest


def _read_model(spec: JobSpec) -> bytes:
    try:
        data = Path(spec.decoder.path).read_bytes()
    except OSError as exc:
        raise VaegenError(f"cannot read model {spec.decoder.path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != spec.decoder.sha256:
        raise VaegenError(f"model {spec.decoder.path} changed since it was validated")
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


def _generate(job: _Job, existing: dict | None, model: bytes) -> dict:
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
    write_manifest(job.out, manifest)
    with _progress(job.options.show_progress, job.spec.num_samples) as bar:
        if manifest["num_rows"]:
            bar.advance(manifest["num_rows"], info="resumed")
        generated = _run_pool(job, manifest, pending, model, bar) if pending else 0
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
    )


def _run_pool(job: _Job, manifest: dict, pending: list[ShardPlan], model: bytes, bar: _Bar) -> int:
    """Run the pending shards; fold each record in as it comes. Returns the rows generated."""
    import ray

    saver = ManifestSaver(job.out, manifest)
    generated, t0 = 0, time.monotonic()
    try:
        with ActorPool(
            ray.put(model), _sampler_config(job), job.layout, pending, job.options.worker_wait
        ) as pool:
            for record in pool.records():
                add_shard(manifest, record)
                saver.save()
                _observe(record)
                generated += record.rows
                rate = generated / max(time.monotonic() - t0, 1e-9)
                telemetry.GENERATE_SAMPLES_PER_SECOND.set(rate)
                info = f"{len(manifest['shards'])}/{manifest['num_shards']}"
                bar.advance(record.rows, info=info)
    except Exception as exc:
        saver.save(force=True)  # keep every finished shard for --resume
        telemetry.GENERATE_SHARDS.labels(status="failed").inc()
        refusal = user_error(exc)
        if refusal is not None:
            raise refusal from None
        raise
    return generated


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
        shards = (
            (np.arange(p.first_id, p.first_id + p.rows, dtype=np.int64), shard_label_sequence(p))
            for p in plans
        )
        write_labels_csv(job.out, shards, job.spec.decoder.class_names)
    manifest["complete"] = True
    manifest["execution"]["seconds"] = round(seconds, 3)
    manifest["execution"]["generated_samples"] = generated
    write_manifest(job.out, manifest)
    sweep_temp_files(job.out)
    if job.options.pushgateway:
        try:
            telemetry.push_metrics(job.options.pushgateway, PUSH_JOB, {"dataset": job.out.name})
        except OSError as exc:
            # The dataset is done and intact; a dashboard hiccup must not fail the job.
            print(f"warning: could not push metrics to {job.options.pushgateway}: {exc}",
                  file=sys.stderr)  # fmt: skip


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
