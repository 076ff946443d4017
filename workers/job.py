"""`run_generation`: plan a job, run it on a pool of Ray actors, keep the manifest current.

Each actor runs a `ShardGenerator` (one onnxruntime session, built once) and, once it is up, is
fed shard plans two at a time, so it never waits on the driver. Actors write their shard files
themselves; only small records flow back, and the driver folds them, in completion order, into
the manifest, the metrics and the progress bar. Peak memory therefore depends on the shard size,
never on --num-samples.

Plain Ray actors rather than Ray Data's `map_batches`: this job reads no input blocks and
returns no data, and on 2 CPUs Ray Data's executor cost a fixed 1.3 s per job (2.9 s for a
process's first job) and 15% of the steady rate (workers/README.md has the figures).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vaegen import telemetry
from vaegen.atomic import atomic_path
from vaegen.errors import ClusterUnavailable, VaegenError
from workers.manifest import (
    add_shard,
    check_resumable,
    load_manifest,
    new_manifest,
    shard_is_intact,
    write_manifest,
)
from workers.sampler import ACTOR_REFUSED, CPU, CUDA, SamplerConfig, ShardGenerator
from workers.spec import JobSpec, ShardPlan, plan_shards, shard_label_sequence
from workers.writers import image_path, sweep_temp_files

SHARD_DELAY_ENV = "VAEGEN_TEST_SHARD_DELAY"  # test hook: seconds each actor sleeps per shard
MAX_CPU_ACTORS = 16  # past this, bigger machines get more ORT threads per actor instead
IN_FLIGHT_PER_ACTOR = 2  # the next shard is queued at the actor while it writes this one
ACTOR_REPLACEMENTS = 3  # per pool slot; a node that keeps killing its actors fails the job
PUSH_JOB = "vaegen_generate"
WORKER_WAIT_S = 600.0  # default --worker-wait: room for an autoscaler to bring a node up
WORKER_WAIT_WARNING_S = 30.0
WAIT_POLL_S = 1.0


@dataclass(frozen=True)
class ActorLayout:
    workers: int
    threads: int  # onnxruntime intra-op threads per actor
    num_cpus: float  # Ray CPU reservation per actor (fractional: leave CPU for other Ray work)
    num_gpus: float
    provider: str


def _floor3(x: float) -> float:
    return math.floor(x * 1000) / 1000  # round down: the pool must fit what it was sized to


def plan_layout(
    workers: int | None,
    gpus_per_worker: float,
    cpus: float,
    gpus: float,
    node_cpus: float | None = None,
) -> ActorLayout:
    """Size the actor pool to the cluster's resources, or raise VaegenError if it cannot run.

    `cpus` and `gpus` are the cluster's totals; `node_cpus`, the most CPUs of any one node,
    caps what one actor reserves (an actor needing more than any node has is never placed).
    """
    if workers is not None and workers < 1:
        raise VaegenError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker < 0:
        raise VaegenError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    cpus = max(cpus, 1.0)
    if gpus_per_worker > 0:
        if gpus < gpus_per_worker:
            raise VaegenError(
                f"--gpus-per-worker {gpus_per_worker:g} needs a GPU, but the Ray cluster has "
                f"{gpus:g}; run on a GPU node or drop --gpus-per-worker"
            )
        count = workers or max(1, int(gpus // gpus_per_worker))
        if count * gpus_per_worker > gpus + 1e-9:
            raise VaegenError(
                f"{count} workers x {gpus_per_worker:g} GPUs need {count * gpus_per_worker:g} "
                f"GPUs; the Ray cluster has {gpus:g}"
            )
        # A GPU actor needs little CPU; still leave one CPU free for the rest of Ray.
        num_cpus = min(1.0, max(0.1, (cpus - 1) / count)) if cpus > 1 else 0.5 / count
        return ActorLayout(count, 1, _floor3(num_cpus), gpus_per_worker, CUDA)
    if workers is None:
        threads = max(1, math.ceil(cpus / MAX_CPU_ACTORS))
        count = max(1, int(cpus // threads))
    else:
        count = workers
        threads = max(1, int(cpus // count))
    # A pool that reserves every CPU starves any other Ray task (a Ray Data read, an eval job
    # sharing the cluster), which then hangs silently: reserve at most cpus - 1 (or half of
    # one CPU on a 1-CPU node). Threads still use every core.
    spare = cpus - 1 if cpus > 1 else 0.5
    num_cpus = max(0.05, min(float(threads), spare / count))
    if node_cpus:
        threads = max(1, min(threads, int(node_cpus)))
        num_cpus = min(num_cpus, node_cpus)
    return ActorLayout(count, threads, _floor3(num_cpus), 0.0, CPU)


def check_output(out: Path, spec: JobSpec, *, resume: bool, overwrite: bool) -> dict | None:
    """Decide what to do with `out` without writing; returns the manifest to resume, if any."""
    if resume and overwrite:
        raise VaegenError("give --resume or --overwrite, not both")
    if out.exists() and not out.is_dir():
        raise VaegenError(f"--out {out} exists and is not a directory")
    existing = None
    if out.is_dir() and any(out.iterdir()):
        manifest = load_manifest(out)
        if resume:
            if manifest is None:
                raise VaegenError(f"cannot resume {out}: it has no manifest.json")
            check_resumable(manifest, spec, out)
            existing = manifest
        elif overwrite:
            if manifest is None:
                raise VaegenError(
                    f"refusing to overwrite {out}: it is not a vaegen dataset (no manifest.json)"
                )
        else:
            raise VaegenError(f"--out {out} is not empty; pass --resume or --overwrite")
    # Prove we can write there, probing the nearest existing ancestor; leave nothing behind.
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise VaegenError(f"cannot write --out {out}: {probe} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".vaegen-probe."):
            pass
    except OSError as exc:
        raise VaegenError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    return existing


def _read_model(spec: JobSpec) -> bytes:
    import hashlib

    try:
        data = Path(spec.decoder.path).read_bytes()
    except OSError as exc:
        raise VaegenError(f"cannot read model {spec.decoder.path}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != spec.decoder.sha256:
        raise VaegenError(f"model {spec.decoder.path} changed since it was validated")
    return data


class _NoProgress:
    def advance(self, amount: float = 1.0, info: str = "") -> None:
        pass


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator:
    if not show:
        yield _NoProgress()
        return
    from vaegen.progress import progress

    with progress("generate", total=total) as bar:
        yield bar


def _observe(record: dict) -> None:
    for label, n in record["class_counts"].items():
        telemetry.GENERATED_SAMPLES.labels(label=label).inc(n)
    for seconds in record.get("batch_seconds", ()):
        telemetry.GENERATE_BATCH_SECONDS.observe(seconds)
    telemetry.GENERATE_SHARDS.labels(status="written").inc()


def _run_pool(
    pending: list[ShardPlan],
    model_ref: object,
    cfg: SamplerConfig,
    layout: ActorLayout,
    worker_wait: float = WORKER_WAIT_S,
) -> Iterator[dict]:
    """Yield each shard's record as its actor finishes it (in completion order).

    An actor is fed shards only once it is up, so one that Ray cannot place (its node was
    lost, no other node has room) holds none back: the live actors finish the job. A dead
    actor is replaced here and its unfinished shards are queued again; shards are idempotent,
    so a retry writes the same bytes. Not Ray's max_restarts: a restartable actor whose
    constructor argument lives in the object store (the model) makes Ray print a warning on
    every job, and a replacement needs nothing more than the reference this driver holds.
    With no actor up for `worker_wait` seconds, the job fails (ClusterUnavailable).
    """
    import ray
    from ray.exceptions import RayActorError

    actor_class = ray.remote(ShardGenerator).options(
        num_cpus=layout.num_cpus,
        num_gpus=layout.num_gpus or None,
        scheduling_strategy="SPREAD",  # across nodes first: each node adds cores and disks
    )
    size = min(layout.workers, len(pending))
    replacements_left = ACTOR_REPLACEMENTS * size
    queue = deque(pending)
    up: list = []  # actors whose __init__ finished: the only ones fed
    starting: dict = {}  # __ray_ready__ ref -> actor
    in_flight: dict = {}  # ObjectRef -> (actor, plan)
    none_up_since = time.monotonic()
    warned = False

    def top_up() -> None:
        load = Counter(id(a) for a, _ in in_flight.values())  # one pass, not one per actor
        for actor in up:
            for _ in range(IN_FLIGHT_PER_ACTOR - load[id(actor)]):
                if not queue:
                    return
                plan = queue.popleft()
                in_flight[actor.__call__.remote(plan)] = (actor, plan)

    def start_actor() -> None:
        actor = actor_class.remote(model_ref, cfg)
        starting[actor.__ray_ready__.remote()] = actor

    def replace(actor: object, exc: RayActorError, lost: list[ShardPlan]) -> None:
        nonlocal replacements_left, none_up_since
        # A failing __init__ (no CUDA provider, --out not visible) would fail again.
        if exc.actor_init_failed or replacements_left == 0:
            raise exc
        replacements_left -= 1
        lost += [in_flight.pop(ref)[1] for ref, (a, _) in list(in_flight.items()) if a is actor]
        queue.extendleft(sorted(lost, key=lambda p: p.index, reverse=True))
        if actor in up:
            up.remove(actor)
            if not up:
                none_up_since = time.monotonic()
        start_actor()
        top_up()  # the live actors take the lost shards now, not after the replacement is up

    try:
        for _ in range(size):
            start_actor()
        while queue or in_flight:
            ready, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=WAIT_POLL_S)
            if not ready:
                if not up:
                    waited = time.monotonic() - none_up_since
                    if waited > worker_wait:
                        raise ClusterUnavailable(
                            f"{_unplaced(layout, waited)}; finished shards are kept for --resume"
                        )
                    if waited > WORKER_WAIT_WARNING_S and not warned:
                        warned = True
                        print(f"warning: {_unplaced(layout, waited)}; waiting up to "
                              f"--worker-wait {worker_wait:g} s", file=sys.stderr)  # fmt: skip
                continue
            [ref] = ready
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError as exc:
                    replace(actor, exc, [])
                    continue
                up.append(actor)
                top_up()
                continue
            actor, plan = in_flight.pop(ref)
            try:
                record = ray.get(ref)
            except RayActorError as exc:
                replace(actor, exc, [plan])
                continue
            top_up()
            yield record
    finally:
        for actor in [*up, *starting.values()]:  # every actor not known dead
            ray.kill(actor)


def _unplaced(layout: ActorLayout, seconds: float) -> str:
    need = f"{layout.num_cpus:g} CPU" + (f" + {layout.num_gpus:g} GPU" if layout.num_gpus else "")
    return (
        f"no worker has been up for {seconds:.0f} s: Ray cannot place an actor needing {need} "
        "(a node was lost, or none has room)"
    )


def _actor_refusal(exc: BaseException) -> VaegenError | None:
    """The one-line reason of an `ActorRefused` raised in an actor, or None."""
    for line in str(exc).splitlines():
        if ACTOR_REFUSED + ":" in line:
            return VaegenError(line.split(ACTOR_REFUSED + ":", 1)[1].strip())
    return None


def write_labels_csv(out: Path, spec: JobSpec, plans: list[ShardPlan]) -> None:
    """labels.csv for imagefolder: id,label,label_name,path, rebuilt from the plans' streams."""
    with atomic_path(out / "labels.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label", "label_name", "path"])
        names = spec.decoder.class_names
        for plan in plans:
            labels = shard_label_sequence(plan).tolist()
            for offset, label in enumerate(labels):
                sample_id = plan.first_id + offset
                name = spec.label_name(label)
                writer.writerow([sample_id, label, name, image_path(label, name, sample_id, names)])


def _prepare_dir(out: Path, overwrite: bool) -> None:
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaegenError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    sweep_temp_files(out)


def run_generation(
    spec: JobSpec,
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    resume: bool = False,
    overwrite: bool = False,
    ray_address: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    pushgateway: str | None = None,
    metrics_linger: float = 0.0,
    show_progress: bool = True,
    io_binding: bool = False,
    worker_wait: float = WORKER_WAIT_S,
) -> dict:
    """Generate the dataset `spec` describes into `out`; returns the final manifest.

    Every check runs before `out` is created: a bad spec, output path, GPU request or metrics
    port raises VaegenError and leaves nothing behind.
    """
    out = Path(out)
    existing = check_output(out, spec, resume=resume, overwrite=overwrite)
    if metrics_linger < 0:
        raise VaegenError("--metrics-linger must be >= 0")
    if not worker_wait > 0:
        raise VaegenError(f"--worker-wait must be > 0 seconds, got {worker_wait:g}")
    plan_layout(workers, gpus_per_worker, 1.0, gpus_per_worker * (workers or 1))  # options only
    if gpus_per_worker > 0 and not (ray_address or os.environ.get("RAY_ADDRESS")):
        # A local run decodes here, so check now; on a cluster each actor checks its node.
        import onnxruntime as ort

        if CUDA not in ort.get_available_providers():
            raise VaegenError(
                f"--gpus-per-worker needs onnxruntime's {CUDA}, which this onnxruntime lacks "
                f"({ort.get_available_providers()}); install onnxruntime-gpu"
            )
    model = _read_model(spec)
    server = (
        telemetry.serve_metrics(metrics_port, metrics_host) if metrics_port is not None else None
    )
    try:
        import ray

        from vaegen.raycluster import init_ray

        init_ray(ray_address)
        resources = ray.cluster_resources()
        node_cpus = max(
            (n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=None
        )
        layout = plan_layout(
            workers,
            gpus_per_worker,
            resources.get("CPU", 1.0),
            resources.get("GPU", 0.0),
            node_cpus=node_cpus,
        )
        _prepare_dir(out, overwrite)
        manifest = _generate(
            spec, out, existing, model, layout, show_progress, io_binding, pushgateway,
            ray_address, worker_wait,
        )  # fmt: skip
        if server is not None and metrics_linger > 0:
            time.sleep(metrics_linger)  # lets a scraper read the final values
        return manifest
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


class _ManifestSaver:
    """Rewrites the manifest after each shard, unless rewriting would cost > 5% of the time.

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


def _generate(
    spec: JobSpec,
    out: Path,
    existing: dict | None,
    model: bytes,
    layout: ActorLayout,
    show_progress: bool,
    io_binding: bool,
    pushgateway: str | None,
    ray_address: str | None,
    worker_wait: float,
) -> dict:
    import ray

    started = time.monotonic()
    plans = plan_shards(spec)
    manifest = new_manifest(spec)
    if existing is not None:
        by_index = {p.index: p for p in plans}
        for record in existing.get("shards", []):
            plan = by_index.get(record.get("index"))
            if plan is not None and shard_is_intact(out, record, plan, spec):
                add_shard(manifest, record)
                telemetry.GENERATE_SHARDS.labels(status="skipped").inc()
    done = {s["index"] for s in manifest["shards"]}
    pending = [p for p in plans if p.index not in done]
    manifest["execution"] = {
        **asdict(layout),
        "ray_address": ray_address or os.environ.get("RAY_ADDRESS") or "local",
        "resumed_shards": len(done),
    }
    write_manifest(out, manifest)

    cfg = SamplerConfig(
        out_dir=str(out.resolve()),
        fmt=spec.format,
        encoding=spec.encoding,
        batch_size=spec.batch_size,
        latent_dim=spec.decoder.latent_dim,
        image_shape=spec.decoder.image_shape,
        class_names=spec.decoder.class_names,
        conditional=spec.decoder.conditional,
        gpu=layout.num_gpus > 0,
        threads=layout.threads,
        io_binding=io_binding,
        shard_delay=float(os.environ.get(SHARD_DELAY_ENV, "0") or 0),
    )
    generated = 0
    with _progress(show_progress, spec.num_samples) as bar:
        if manifest["num_rows"]:
            bar.advance(manifest["num_rows"], info="resumed")
        if pending:
            model_ref = ray.put(model)
            t0 = time.monotonic()
            saver = _ManifestSaver(out, manifest)
            # closing(): on any exception (Ctrl-C included) the pool's actors are killed now,
            # while Ray is up, not when the generator is collected at exit (that segfaulted).
            try:
                with contextlib.closing(
                    _run_pool(pending, model_ref, cfg, layout, worker_wait)
                ) as records:
                    for record in records:
                        add_shard(manifest, record)
                        saver.save()
                        _observe(record)
                        generated += record["rows"]
                        telemetry.GENERATE_SAMPLES_PER_SECOND.set(
                            generated / max(time.monotonic() - t0, 1e-9)
                        )
                        info = f"{len(manifest['shards'])}/{len(plans)}"
                        bar.advance(record["rows"], info=info)
            except Exception as exc:
                saver.save(force=True)  # keep every finished shard for --resume
                telemetry.GENERATE_SHARDS.labels(status="failed").inc()
                refusal = _actor_refusal(exc)
                if refusal is not None:
                    raise refusal from None
                raise

    missing = len(plans) - len(manifest["shards"])
    if missing:  # never call a short dataset complete
        raise RuntimeError(f"{missing} shards were not written; rerun with --resume")
    if spec.format == "imagefolder":
        write_labels_csv(out, spec, plans)
    elapsed = time.monotonic() - started
    manifest["complete"] = True
    manifest["execution"]["seconds"] = round(elapsed, 3)
    manifest["execution"]["generated_samples"] = generated
    write_manifest(out, manifest)
    sweep_temp_files(out)

    if pushgateway:
        try:
            telemetry.push_metrics(pushgateway, PUSH_JOB, {"dataset": out.name})
        except OSError as exc:
            # The dataset is done and intact; a dashboard hiccup must not fail the job.
            print(f"warning: could not push metrics to {pushgateway}: {exc}", file=sys.stderr)
    return manifest
