"""The Ray Train function: a module-level function of a plain config dict.

Every worker calls `ray.train.report` once per epoch; rank 0 attaches the checkpoint
(unwrapped weights, optimizer state, epoch). After a worker failure Ray Train restarts the group
and `ray.train.get_checkpoint()` hands back the latest checkpoint. In process (Ray Train's local
mode, trainer/inprocess.py), rank 0 writes each checkpoint under RUN/checkpoints/local/ itself and
puts its metrics on the driver's queue; a restart resumes from config["resume_from"].
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainer.adversarial import Adversary
from trainer.collapse import latent_metrics
from trainer.config import ModelConfig, TrainConfig
from trainer.inprocess import STATE_FILE, checkpoint_epoch, save_checkpoint
from trainer.models import VAE, build_model
from trainer.perceptual import perceptual_loss
from trainer.semisupervised import SemiSupervised, classifier_correct
from trainer.step import Parts, model_inputs, record_elbo, train_step
from trainer.tally import Tally
from trainer.timeline import TIMELINE_KEY, process_start
from vaegen.raycluster import node_cpus

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = STATE_FILE
# Tests slow epochs down with this, so a worker can be killed mid-run.
EPOCH_SLEEP_ENV = "VAEGEN_TEST_EPOCH_SLEEP"


def _unwrap(model: torch.nn.Module) -> VAE:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def _run_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    parts: Parts | None,
    epoch: int,
    binarize_gen: torch.Generator | None,
) -> dict[str, float]:
    """One pass, training when `parts` is given; per-image means summed over all workers."""
    training = parts is not None
    model.train(training)
    tally = Tally()
    steps = max(len(loader), 1)
    with torch.set_grad_enabled(training):
        for step, (images, labels) in enumerate(loader):
            if parts is not None:
                train_step(model, parts, images, labels, epoch + step / steps, binarize_gen, tally)
            else:
                _test_step(_unwrap(model), images, labels, tally)
    return tally.means()


def _test_step(model: VAE, images: torch.Tensor, labels: torch.Tensor, tally: Tally) -> None:
    x, _ = model_inputs(images, None)
    out = model.sample_forward(x, labels if model.cfg.conditional else None)  # a Monte Carlo ELBO
    record_elbo(tally, out)
    if model.classifier is not None:
        tally.add_mean("classifier_accuracy", classifier_correct(model, x, labels))


def _save_checkpoint(directory: Path, model: VAE, parts: Parts, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / CHECKPOINT_WEIGHTS))
    torch.save(parts.optimizer.state_dict(), directory / CHECKPOINT_OPTIMIZER)
    if parts.adversary is not None:
        parts.adversary.save(directory)
    (directory / CHECKPOINT_STATE).write_text(json.dumps(state))


def _load_checkpoint(directory: Path, model: VAE, parts: Parts) -> int:
    """Restore weights and optimizers; return the next epoch to run."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(directory / CHECKPOINT_WEIGHTS)))
    optimizer_state = torch.load(directory / CHECKPOINT_OPTIMIZER, weights_only=True)
    parts.optimizer.load_state_dict(optimizer_state)
    if parts.adversary is not None:
        parts.adversary.load(directory)
    return int(checkpoint_epoch(directory)) + 1  # type: ignore[arg-type] - readable: _prepare checks


def _loaders(
    data: tuple[np.ndarray, ...], train_cfg: TrainConfig, rank: int, world: int
) -> tuple[DataLoader, DataLoader]:
    """This worker's shards of the train (shuffled) and test splits."""
    train_x, train_y, test_x, test_y = data
    train_set = TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y))
    test_set = TensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y))
    per_worker_batch = max(1, train_cfg.batch_size // world)
    train_sampler = DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=train_cfg.seed
    )
    test_sampler = DistributedSampler(test_set, num_replicas=world, rank=rank, shuffle=False)
    return (
        DataLoader(train_set, batch_size=per_worker_batch, sampler=train_sampler),
        DataLoader(test_set, batch_size=max(per_worker_batch, 512), sampler=test_sampler),
    )


def _report(
    config: dict[str, Any],
    rank: int,
    model: VAE,
    parts: Parts,
    metrics: dict[str, Any],
    events: dict[str, float],
) -> dict[str, float]:
    """Report one epoch; rank 0 attaches the checkpoint and its timeline steps so far.

    Returns the steps to send with the next report.
    """
    import ray.train
    from ray.train import Checkpoint

    if rank != 0:
        ray.train.report(metrics)
        return events
    epoch = metrics["epoch"]
    state = {"epoch": epoch, "metrics": metrics}
    if config.get("local_checkpoints"):  # in process: Ray's local mode keeps no checkpoint
        keep = TrainConfig.from_dict(config["train"]).keep_checkpoints
        root = Path(config["local_checkpoints"])
        write = functools.partial(_save_checkpoint, model=model, parts=parts, state=state)
        kept = save_checkpoint(root, epoch, write, keep)
        events[f"epoch {epoch} checkpoint written"] = time.time()
        sent = {**metrics, TIMELINE_KEY: events}
        ray.train.report(sent, checkpoint=Checkpoint.from_directory(kept))
        config["epoch_queue"].put(sent)  # what the Ray path's controller callback forwards
        return {f"epoch {epoch} report returned": time.time()}
    with tempfile.TemporaryDirectory(prefix="vaegen-ckpt-") as tmp:
        _save_checkpoint(Path(tmp), model, parts, state)
        events[f"epoch {epoch} checkpoint written"] = time.time()
        sent = {**metrics, TIMELINE_KEY: events}
        ray.train.report(sent, checkpoint=Checkpoint.from_directory(tmp))
    return {f"epoch {epoch} report returned": time.time()}


def _fetch(value: Any) -> Any:
    """A Ray object reference's value (Ray workers), or the value itself (in process)."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _build(
    config: dict[str, Any],
    data: tuple[np.ndarray, ...],
    cfgs: tuple[ModelConfig, TrainConfig],
    rank: int,
    world: int,
) -> tuple[VAE, Parts]:
    """The model and what trains it: its optimizer and the run's optional terms."""
    model_cfg, train_cfg = cfgs
    model = build_model(model_cfg)
    if train_cfg.init_output_bias:  # a resumed run's checkpoint overwrites it below
        model.init_output_bias(torch.from_numpy(data[0].mean(0, dtype=np.float64) / 255.0))
    parts = Parts(torch.optim.Adam(model.parameters(), lr=train_cfg.lr), train_cfg)
    if config.get("judge") is not None:
        parts.perceptual = perceptual_loss(_fetch(config["judge"]), train_cfg)
    if train_cfg.loss.adversarial_weight > 0:
        parts.adversary = Adversary(model_cfg, train_cfg.loss)
    if train_cfg.semi_supervised:
        batch = max(1, train_cfg.batch_size // world)
        parts.semi = SemiSupervised(data[0], data[1], train_cfg, rank, batch)
    return model, parts


def _prepare(
    model: VAE, parts: Parts, world: int, resume_from: str | None
) -> tuple[torch.nn.Module, int]:
    """Resume from the newer of Ray's checkpoint and `resume_from` (the newest one the driver
    found under RUN/checkpoints/, which a run of the other layout may have written), then wrap
    the trained nets in DDP. Returns the model to train and the first epoch to run."""
    import ray.train
    import ray.train.torch

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        found = [Path(stack.enter_context(checkpoint.as_directory()))] if checkpoint else []
        found += [Path(resume_from)] if resume_from else []
        found = [d for d in found if checkpoint_epoch(d) is not None]  # not since pruned
        if found:
            start_epoch = _load_checkpoint(max(found, key=checkpoint_epoch), model, parts)
    if world == 1:
        return model, start_epoch
    if parts.adversary is not None:
        parts.adversary.wrap(ray.train.torch.prepare_model(parts.adversary.net))
    return ray.train.torch.prepare_model(model), start_epoch


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    # Rank 0's steps, sent with each report for RUN/timeline.json (trainer/timeline.py).
    events = {"worker process start": process_start(), "worker loop start": time.time()}
    cfgs = ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    train_cfg = cfgs[1]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # 0: a whole-node worker (the default layout) uses all of its node's cores.
    torch.set_num_threads(int(config.get("threads_per_worker", 1)) or node_cpus())
    torch.manual_seed(train_cfg.seed * 1000 + rank)

    data = _fetch(config["data"])
    train_loader, test_loader = _loaders(data, train_cfg, rank, world)
    events["worker data ready"] = time.time()
    model, parts = _build(config, data, cfgs, rank, world)
    ddp_model, start_epoch = _prepare(model, parts, world, config.get("resume_from"))
    binarize_gen = None
    if train_cfg.binarize:
        binarize_gen = torch.Generator().manual_seed(train_cfg.seed * 7919 + rank)
    events["worker model ready"] = time.time()
    for epoch in range(start_epoch, train_cfg.epochs):
        train_loader.sampler.set_epoch(epoch)
        events[f"epoch {epoch} start"] = time.time()
        started = time.perf_counter()
        train = _run_epoch(ddp_model, train_loader, parts, epoch, binarize_gen)
        train_seconds = time.perf_counter() - started
        events[f"epoch {epoch} train pass end"] = time.time()
        test = _run_epoch(ddp_model, test_loader, None, epoch, None)
        events[f"epoch {epoch} test pass end"] = time.time()
        time.sleep(float(os.environ.get(EPOCH_SLEEP_ENV, "0") or 0))
        metrics = _epoch_metrics(epoch, train, test, train_cfg, world)
        metrics["samples_per_s"] = train["n"] / max(train_seconds, 1e-9)
        metrics.update(latent_metrics(model, data[2], data[3], beta=train_cfg.loss.beta))
        metrics["epoch_seconds"] = time.perf_counter() - started
        events = _report(config, rank, model, parts, metrics, events)


def _epoch_metrics(
    epoch: int,
    train: dict[str, float],
    test: dict[str, float],
    train_cfg: TrainConfig,
    world: int,
) -> dict[str, Any]:
    """train_log.jsonl's line: both passes' ELBO terms, then each optional term under its name
    (test ones prefixed test_)."""
    base = ("elbo", "reconstruction", "kl")
    metrics: dict[str, Any] = {"epoch": epoch}
    for split, means in (("train", train), ("test", test)):
        metrics.update({f"{split}_{k}": means[k] for k in base})
    metrics.update({k: v for k, v in train.items() if k not in (*base, "n")})
    metrics.update({f"test_{k}": v for k, v in test.items() if k not in (*base, "n")})
    metrics.update(kl_weight=train_cfg.loss.kl_weight(epoch + 1), world_size=world)
    return metrics


def pack_data(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_inputs: np.ndarray,
    test_labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the driver ray.put()s: uint8 train images (scaled per batch), float test inputs."""
    return (
        np.ascontiguousarray(train_images),
        train_labels.astype(np.int64),
        np.ascontiguousarray(test_inputs, dtype=np.float32),
        test_labels.astype(np.int64),
    )
