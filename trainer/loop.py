"""The Ray Train function: a module-level function of a plain config dict.

Every worker calls `ray.train.report` once per epoch; rank 0 attaches the checkpoint
(unwrapped weights, optimizer state, epoch). After a worker failure Ray Train restarts the group
and `ray.train.get_checkpoint()` hands back the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainer.collapse import latent_metrics
from trainer.config import ModelConfig, TrainConfig
from trainer.corruption import parse_corruption
from trainer.models import VAE, build_model, label_loss
from trainer.objectives import objective_loss
from trainer.timeline import TIMELINE_KEY, process_start
from vaegen.raycluster import node_cpus

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_STATE = "state.json"
# Tests slow epochs down with this, so a worker can be killed mid-run.
EPOCH_SLEEP_ENV = "VAEGEN_TEST_EPOCH_SLEEP"


def _unwrap(model: torch.nn.Module) -> VAE:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def _all_reduce_sums(values: list[float]) -> list[float]:
    """Sum per-worker totals across the group (no-op for a single process)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _run_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer | None,
    train_cfg: TrainConfig,
    epoch: int,
    binarize_gen: torch.Generator | None,
) -> dict[str, float]:
    """One pass; returns per-sample means of the ELBO terms, summed over all workers."""
    training = optimizer is not None
    model.train(training)
    sums = [0.0, 0.0, 0.0, 0.0]  # elbo, reconstruction, kl, count
    corruption = parse_corruption(train_cfg.loss.corrupt)
    steps = max(len(loader), 1)
    with torch.set_grad_enabled(training):
        for step, (images, labels) in enumerate(loader):
            x = images.float().div_(255.0) if images.dtype == torch.uint8 else images
            if binarize_gen is not None:
                x = torch.bernoulli(x, generator=binarize_gen)  # dynamic binarization
            y = labels if _unwrap(model).cfg.conditional else None
            if training:
                # Denoising: the encoder sees a corrupted copy, the likelihood scores x itself.
                x_in = corruption.apply(x) if corruption is not None else x
                out = model(x_in, y, target=x, samples=train_cfg.loss.iw_samples)
                loss = objective_loss(out, train_cfg.loss, epoch + step / steps)
                loss = loss + label_loss(out, train_cfg.loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                out = _unwrap(model).sample_forward(x, y)  # a Monte Carlo ELBO, not z = mu
            sums[0] += float(out.elbo.detach().sum())
            sums[1] += float(out.reconstruction.detach().sum())
            sums[2] += float(out.kl.detach().sum())
            sums[3] += len(x)
    elbo, rec, kl, count = _all_reduce_sums(sums)
    count = max(count, 1.0)
    return {"elbo": elbo / count, "reconstruction": rec / count, "kl": kl / count, "n": count}


def _save_checkpoint(
    directory: Path, model: VAE, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / CHECKPOINT_WEIGHTS))
    torch.save(optimizer.state_dict(), directory / CHECKPOINT_OPTIMIZER)
    (directory / CHECKPOINT_STATE).write_text(json.dumps(state))


def _load_checkpoint(directory: Path, model: VAE, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights and optimizer; return the next epoch to run."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(directory / CHECKPOINT_WEIGHTS)))
    optimizer.load_state_dict(torch.load(directory / CHECKPOINT_OPTIMIZER, weights_only=True))
    return int(json.loads((directory / CHECKPOINT_STATE).read_text())["epoch"]) + 1


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
    rank: int,
    model: VAE,
    optimizer: torch.optim.Optimizer,
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
    with tempfile.TemporaryDirectory(prefix="vaegen-ckpt-") as tmp:
        _save_checkpoint(Path(tmp), model, optimizer, {"epoch": epoch, "metrics": metrics})
        events[f"epoch {epoch} checkpoint written"] = time.time()
        sent = {**metrics, TIMELINE_KEY: events}
        ray.train.report(sent, checkpoint=Checkpoint.from_directory(tmp))
    return {f"epoch {epoch} report returned": time.time()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    # Rank 0's steps, sent with each report for RUN/timeline.json (trainer/timeline.py).
    events = {"worker process start": process_start(), "worker loop start": time.time()}
    model_cfg = ModelConfig.from_dict(config["model"])
    train_cfg = TrainConfig.from_dict(config["train"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # 0: a whole-node worker (the default layout) uses all of its node's cores.
    torch.set_num_threads(int(config.get("threads_per_worker", 1)) or node_cpus())
    torch.manual_seed(train_cfg.seed * 1000 + rank)

    data = ray.get(config["data_ref"])
    test_x, test_y = data[2], data[3]
    train_loader, test_loader = _loaders(data, train_cfg, rank, world)
    train_sampler = train_loader.sampler
    events["worker data ready"] = time.time()

    model = build_model(model_cfg)
    if train_cfg.init_output_bias:  # a resumed run's checkpoint overwrites it below
        model.init_output_bias(torch.from_numpy(data[0].mean(0, dtype=np.float64) / 255.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_epoch = _load_checkpoint(Path(directory), model, optimizer)
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    binarize_gen = None
    if train_cfg.binarize:
        binarize_gen = torch.Generator().manual_seed(train_cfg.seed * 7919 + rank)
    sleep = float(os.environ.get(EPOCH_SLEEP_ENV, "0") or 0)
    events["worker model ready"] = time.time()
    for epoch in range(start_epoch, train_cfg.epochs):
        train_sampler.set_epoch(epoch)
        events[f"epoch {epoch} start"] = time.time()
        started = time.perf_counter()
        train = _run_epoch(ddp_model, train_loader, optimizer, train_cfg, epoch, binarize_gen)
        train_seconds = time.perf_counter() - started
        events[f"epoch {epoch} train pass end"] = time.time()
        test = _run_epoch(ddp_model, test_loader, None, train_cfg, epoch, None)
        events[f"epoch {epoch} test pass end"] = time.time()
        if sleep:
            time.sleep(sleep)
        metrics = {
            "epoch": epoch,
            "train_elbo": train["elbo"],
            "train_reconstruction": train["reconstruction"],
            "train_kl": train["kl"],
            "test_elbo": test["elbo"],
            "test_reconstruction": test["reconstruction"],
            "test_kl": test["kl"],
            "kl_weight": train_cfg.loss.kl_weight(epoch + 1),
            "samples_per_s": train["n"] / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - started,
            "world_size": world,
            **latent_metrics(model, test_x, test_y, beta=train_cfg.loss.beta),
        }
        events = _report(rank, model, optimizer, metrics, events)


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
