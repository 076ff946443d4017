"""Driver side of training: validate, start Ray Train, stream per-epoch metrics, save RUN/model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from trainer.checkpoint import save_model
from trainer.config import ModelConfig, TrainConfig, check_compatible
from trainer.inprocess import wanted
from trainer.resume import check_same_run, record_run
from trainer.timeline import (
    TIMELINE_FILE,
    TIMELINE_KEY,
    Timeline,
    controller_timeline_callback,
)
from vaegen.atomic import ensure_writable_dir
from vaegen.dirlock import hold_directory
from vaegen.errors import VaegenError

RUN_NAME = "train"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model"
FIT_DONE = "vaegen: fit returned"  # the last message on the epoch queue


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    epochs_run: int


def _swap_in(staging: Path, final: Path) -> None:
    """Replace `final` by the fully written `staging` folder; the old one goes only after."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _has_checkpoints(run_dir: Path) -> bool:
    root = run_dir / CHECKPOINTS
    return root.is_dir() and any(root.iterdir())


def _forward_metrics_callback(queue: Any) -> Any:
    """A Ray Train callback (it runs in the controller) that sends rank 0's metrics to `queue`."""
    from ray.train.v2.api.callback import UserCallback

    class ForwardMetrics(UserCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics:
                queue.put(dict(metrics[0]))

    return ForwardMetrics()


def _torch_trainer() -> type:
    """TorchTrainer without Ray's PlacementGroupCleaner and Ray Data callbacks.

    The cleaner is a detached actor (one more process to start) that asks the State API, served
    by the dashboard vaegen does not start, whether the controller lives: each ask waits out a
    10 s timeout, and stopping it at the end of every run waited for one (12 s of the fixed
    time). A job's placement groups are removed with its driver anyway. The datasets callback
    serves `ray.train.get_dataset_shard`, which vaegen does not use (its data travels as one
    object-store reference): without it, the controller and the workers do not import Ray Data
    and no DatasetManager actor starts.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    unused = (PlacementGroupCleanerCallback, DatasetsCallback)

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, unused)]

    return Trainer


def _scaling(layout: Any) -> Any:
    from ray.train import ScalingConfig

    # One worker per node when sized to the cluster: STRICT_SPREAD keeps two off one node.
    spread = layout.chosen_by == "cluster" and not layout.gpu and layout.workers > 1
    return ScalingConfig(
        num_workers=layout.workers,
        use_gpu=layout.gpu,
        resources_per_worker={"CPU": layout.cpus_per_worker},
        placement_strategy="STRICT_SPREAD" if spread else "PACK",
    )


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    ray_address: str | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train on Ray and write RUN/{model,checkpoints,train_log.jsonl}; one job per RUN."""
    timeline = Timeline()
    timeline.mark("train() called")
    _start_imports()
    run_dir = Path(out).resolve()
    with hold_directory(run_dir, "vaegen train"):
        return _train_locked(
            model_cfg, train_cfg, run_dir, resume, ray_address, show_progress, timeline
        )


def _start_imports() -> None:
    """Import torch and the training modules on a thread while this one checks the inputs and
    starts Ray: each takes seconds. A later import of them here waits for the thread's."""

    def work() -> None:
        import trainer.loop  # noqa: F401 - torch, the models, the step

    threading.Thread(target=work, name="vaegen-imports", daemon=True).start()


def _train_locked(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    ray_address: str | None,
    show_progress: bool,
    timeline: Timeline,
) -> TrainResult:
    _check_resume(run_dir, resume)
    # The judge of --perceptual-weight, found and hashed here: a resume must use the same one.
    if train_cfg.loss.perceptual_weight > 0:  # (its module imports torch: only when needed)
        from trainer.perceptual import resolve_judge

        train_cfg = resolve_judge(model_cfg, train_cfg)
    if resume:
        check_same_run(run_dir, model_cfg, train_cfg)  # before Ray: exit 2 naming the field
    splits = _load_splits(model_cfg, train_cfg)
    ensure_writable_dir(run_dir)
    record_run(run_dir, model_cfg, train_cfg)
    timeline.mark("datasets loaded (driver)")
    # What runs the training (returning Ray Train's Result), the queue each epoch's metrics
    # arrive on, and the worker layout (vaegen.raycluster.TrainLayout).
    if wanted(ray_address, train_cfg.workers, train_cfg.gpu):
        made = _in_process_run(model_cfg, train_cfg, run_dir, splits, timeline)
    else:
        made = _ray_run(model_cfg, train_cfg, run_dir, splits, ray_address, timeline)
    run_fit, queue, layout = made
    bar = show_progress
    result, last, epochs_run = _fit(run_fit, queue, run_dir, train_cfg.epochs, bar, timeline)
    timeline.mark("fit() returned")
    model_dir = run_dir / MODEL
    # config.json records the worker group this run used (train.workers: its size).
    used = dataclasses.replace(train_cfg, workers=layout.workers)
    final = _save_model(result, last, model_cfg, used, splits, model_dir, layout.to_dict())
    timeline.mark("RUN/model written")
    timeline.save(run_dir / TIMELINE_FILE)
    return TrainResult(run_dir=run_dir, model_dir=model_dir, metrics=final, epochs_run=epochs_run)


def _check_resume(run_dir: Path, resume: bool) -> None:
    if _has_checkpoints(run_dir) and not resume:
        raise VaegenError(f"{run_dir} already holds a training run; pass --resume or a new --out")
    if resume and not _has_checkpoints(run_dir):
        raise VaegenError(f"--resume: {run_dir} has no checkpoints to resume from")


def _load_splits(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[Any, Any]:
    """(train, test) datasets, checked against the configs before Ray starts."""
    from trainer.datasets import load_dataset

    kwargs = {"data_dir": train_cfg.data_dir, "image_size": train_cfg.image_size}
    train_set = load_dataset(train_cfg.dataset, "train", **kwargs)
    test_set = load_dataset(train_cfg.dataset, "test", **kwargs)
    if model_cfg.image_shape != train_set.image_shape:
        raise VaegenError(
            f"model image shape {model_cfg.image_shape} != dataset {train_set.image_shape}"
        )
    check_compatible(model_cfg, train_cfg)
    return train_set, test_set


def _in_process_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    splits: tuple[Any, Any],
    timeline: Timeline,
) -> tuple[Callable[[], Any], Any, Any]:
    """One worker in this process (Ray Train's local mode; trainer/inprocess.py says why)."""
    import queue

    from trainer.inprocess import LOCAL_DIR, fit_in_process
    from trainer.loop import train_loop_per_worker
    from vaegen.raycluster import local_layout

    layout = local_layout()
    print(f"train layout: {layout.describe()}", flush=True)
    timeline.mark("worker layout chosen")
    epochs: queue.Queue = queue.Queue()
    config = {
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        **_payload(model_cfg, train_cfg, splits, share=False),
        "threads_per_worker": layout.threads,
        "local_checkpoints": str(run_dir / CHECKPOINTS / LOCAL_DIR),
        "epoch_queue": epochs,
    }

    def make_trainer(resume_from: str | None) -> Any:
        from ray.train import ScalingConfig

        return _torch_trainer()(
            train_loop_per_worker,
            train_loop_config={**config, "resume_from": resume_from},
            scaling_config=ScalingConfig(num_workers=0),
        )

    def run_fit() -> Any:
        checkpoints = run_dir / CHECKPOINTS
        return fit_in_process(make_trainer, checkpoints, train_cfg.max_failures, _say)

    return run_fit, epochs, layout


def _say(line: str) -> None:
    print(line, flush=True)


def _ray_run(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    splits: tuple[Any, Any],
    ray_address: str | None,
    timeline: Timeline,
) -> tuple[Callable[[], Any], Any, Any]:
    """Start (or join) Ray and build the TorchTrainer of the layout's worker actors."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.util.queue import Queue

    from trainer.inprocess import LOCAL_DIR, latest_checkpoint
    from trainer.loop import train_loop_per_worker
    from vaegen.raycluster import cluster_layout, init_ray

    # Ray Train's controller polls workers every 2 s by default, and each epoch's report waits
    # for a poll: on small datasets that idles longer than the epoch computes. Poll faster.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray Train's own Prometheus metrics (a callback in the controller and in each worker, run
    # on every poll and report): vaegen exports its own (vaegen.telemetry), so skip that work.
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
    init_ray(ray_address)
    timeline.mark("Ray started")
    layout = cluster_layout(train_cfg.workers, train_cfg.gpu)
    print(f"train layout: {layout.describe()}", flush=True)
    timeline.mark("worker layout chosen")
    payload = _payload(model_cfg, train_cfg, splits, share=True)
    queue = Queue(actor_options={"num_cpus": 0})
    timeline.mark("data in the object store")
    # A resume of an in-process run (Ray Train restores its own checkpoints by itself).
    latest = latest_checkpoint(run_dir / CHECKPOINTS / LOCAL_DIR)
    trainer = _torch_trainer()(
        train_loop_per_worker,
        train_loop_config={
            "model": model_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            **payload,
            "threads_per_worker": layout.threads,
            "resume_from": None if latest is None else str(latest),
        },
        scaling_config=_scaling(layout),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(run_dir / CHECKPOINTS),
            checkpoint_config=CheckpointConfig(num_to_keep=train_cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            callbacks=[_forward_metrics_callback(queue), controller_timeline_callback(queue)],
        ),
    )
    return trainer.fit, queue, layout


def _payload(
    model_cfg: ModelConfig, train_cfg: TrainConfig, splits: tuple[Any, Any], share: bool
) -> dict[str, Any]:
    """The data (M2: with the unlabeled images' labels hidden) and the judge; `share` ray.puts
    each once, for worker actors to fetch."""
    from trainer.inputs import evaluation_inputs
    from trainer.loop import pack_data
    from trainer.perceptual import judge_payload
    from trainer.semisupervised import hide_labels

    train_set, test_set = splits
    test_inputs = evaluation_inputs(test_set.images, train_cfg.binarize)
    labels = train_set.labels
    if train_cfg.semi_supervised:  # the workers see the labeled subset's labels only
        labels = hide_labels(labels, train_cfg, model_cfg.num_classes)
    payload = {
        "data": pack_data(train_set.images, labels, test_inputs, test_set.labels),
        "judge": judge_payload(train_cfg),
    }
    if share:
        import ray

        payload = {k: None if v is None else ray.put(v) for k, v in payload.items()}
    return payload


def _fit(
    run_fit: Callable[[], Any],
    queue: Any,
    run_dir: Path,
    epochs: int,
    show_progress: bool,
    timeline: Timeline,
) -> tuple[Any, dict[str, Any], int]:
    """Run `run_fit()` on a thread while this one logs each epoch as it arrives.

    Returns Ray's result, the last epoch's metrics and the number of epochs run.
    """
    from queue import Empty  # ray.util.queue.Empty derives from it

    from vaegen.progress import progress

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = run_fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            outcome["error"] = exc
        finally:  # wake the loop below now, not at its next timeout; it also polls the thread
            with contextlib.suppress(Exception):
                queue.put(FIT_DONE)

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    last: dict[str, Any] = {}
    epochs_run = 0
    with (
        progress("train", epochs) as bar,
        open(run_dir / TRAIN_LOG, "a", encoding="utf-8") as log,
    ):
        while True:
            try:
                message = queue.get(timeout=0.5)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    break
                continue
            if message == FIT_DONE:  # every epoch was put before it
                break
            steps = message.pop(TIMELINE_KEY, {})
            timeline.merge("worker: " if "epoch" in message else "", steps)
            if "epoch" not in message:  # a controller step, not an epoch
                continue
            last = message
            epochs_run += 1
            timeline.mark(f"epoch {last['epoch']} logged (driver)")
            _record_epoch(last, log, bar if show_progress else None)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], last, epochs_run


def _record_epoch(metrics: dict[str, Any], log: IO[str], bar: Any | None) -> None:
    """One epoch's metrics: a train_log.jsonl line, the Prometheus gauges, the progress bar."""
    from vaegen import telemetry

    metrics["time"] = time.time()
    log.write(json.dumps(metrics) + "\n")
    log.flush()
    telemetry.TRAIN_EPOCH_SECONDS.observe(metrics["epoch_seconds"])
    for term in ("elbo", "reconstruction", "kl"):
        telemetry.TRAIN_LOSS.labels(term=f"train_{term}").set(metrics[f"train_{term}"])
        telemetry.TRAIN_LOSS.labels(term=f"test_{term}").set(metrics[f"test_{term}"])
    if bar is not None:
        bar.advance(
            1,
            info=f"epoch {metrics['epoch'] + 1}: test ELBO {metrics['test_elbo']:.2f} "
            f"({metrics['samples_per_s']:,.0f} samples/s)",
        )


def _save_model(
    result: Any,
    last: dict[str, Any],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    splits: tuple[Any, Any],
    model_dir: Path,
    layout: dict[str, Any],
) -> dict[str, Any]:
    """RUN/model from Ray's last checkpoint (written aside, then swapped in); its metrics."""
    from safetensors.torch import load_file

    from trainer.loop import CHECKPOINT_STATE, CHECKPOINT_WEIGHTS
    from trainer.models import build_model

    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    checkpoint = result.checkpoint or _resumed_checkpoint(model_dir.parent)
    model = build_model(model_cfg)
    with checkpoint.as_directory() as directory:
        model.load_state_dict(load_file(str(Path(directory) / CHECKPOINT_WEIGHTS)))
        state = json.loads((Path(directory) / CHECKPOINT_STATE).read_text())
    final = state.get("metrics", last)
    train_set, test_set = splits
    staging = model_dir.with_name(f".{MODEL}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(
        staging,
        model,
        dataset={
            "name": train_set.name,
            "image_shape": list(train_set.image_shape),
            "class_names": list(train_set.class_names),
            "num_train": len(train_set),
            "num_test": len(test_set),
        },
        train={**train_cfg.to_dict(), "layout": layout},
        metrics=final,
    )
    _swap_in(staging, model_dir)
    return final


def _resumed_checkpoint(run_dir: Path) -> Any:
    """With no epoch left to run (a --resume to the epochs already done), neither layout
    reports a checkpoint: the newest one on disk, which the run resumed from, is the result."""
    from ray.train import Checkpoint

    from trainer.inprocess import latest_checkpoint

    latest = latest_checkpoint(run_dir / CHECKPOINTS)
    if latest is None:
        raise RuntimeError("training finished without a checkpoint")
    return Checkpoint.from_directory(str(latest))
