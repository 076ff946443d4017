"""Epoch time of Ray Train (1 worker) against a plain PyTorch loop, same model and data.

Prints the median epoch time of each, their ratio, and Ray's fixed start-up cost. Both sides run
one training pass plus one test pass per epoch, with the same batch size and thread count.

    python bench/train.py [--dataset mnist --data-dir ../shared/data/mnist] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.config import ModelConfig, TrainConfig
from trainer.datasets import load_dataset
from trainer.inputs import scale
from trainer.models import build_model, training_loss

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def plain_loop(model_cfg: ModelConfig, train_cfg: TrainConfig, threads: int) -> list[float]:
    """What a user would write: a DataLoader, Adam, and the same loss."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tr = load_dataset(train_cfg.dataset, "train", data_dir=train_cfg.data_dir)
    te = load_dataset(train_cfg.dataset, "test", data_dir=train_cfg.data_dir)
    train_loader = DataLoader(
        TensorDataset(torch.from_numpy(tr.images), torch.from_numpy(tr.labels)),
        batch_size=train_cfg.batch_size,
        shuffle=True,
    )
    test_loader = DataLoader(
        TensorDataset(torch.from_numpy(scale(te.images)), torch.from_numpy(te.labels)),
        batch_size=512,
    )
    model = build_model(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    times = []
    for epoch in range(train_cfg.epochs):
        start = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            out = model(images.float() / 255.0, labels)
            loss = training_loss(out, train_cfg.loss, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            for x, labels in test_loader:
                model.sample_forward(x, labels)
        times.append(time.perf_counter() - start)
    return times


def ray_train(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[list[float], float]:
    from trainer.run import train

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(model_cfg, train_cfg, Path(tmp) / "run", show_progress=False)
        wall = time.perf_counter() - start
        log = [json.loads(x) for x in (Path(tmp) / "run" / "train_log.jsonl").open()]
    return [e["epoch_seconds"] for e in log], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = "mnist" if SHARED_MNIST.exists() else "digits"
    parser.add_argument("--dataset", default=default)
    parser.add_argument("--data-dir", default=str(SHARED_MNIST) if default == "mnist" else None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="vae")
    args = parser.parse_args()

    probe = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    model_cfg = ModelConfig(
        model=args.model, image_shape=probe.image_shape, num_classes=probe.num_classes
    )
    train_cfg = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, workers=1
    )
    threads = os.cpu_count() or 1
    plain = plain_loop(model_cfg, train_cfg, threads)
    ray_epochs, ray_wall = ray_train(model_cfg, train_cfg)
    p, r = statistics.median(plain), statistics.median(ray_epochs)
    n = len(load_dataset(args.dataset, "train", data_dir=args.data_dir))
    print(
        f"dataset {args.dataset} ({n} train images), model {args.model}/mlp, "
        f"batch {train_cfg.batch_size}, {args.epochs} epochs, {threads} threads"
    )
    print(f"{'':24}{'median epoch s':>16}{'samples/s':>12}")
    print(f"{'plain PyTorch loop':24}{p:>16.2f}{n / p:>12,.0f}")
    print(f"{'Ray Train, 1 worker':24}{r:>16.2f}{n / r:>12,.0f}")
    print(f"ratio Ray/plain epoch time: {r / p:.2f}x")
    print(f"Ray start-up + teardown (wall - epochs): {ray_wall - sum(ray_epochs):.1f} s")


if __name__ == "__main__":
    main()
