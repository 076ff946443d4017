"""`vaegen train` from command start to exit, against a plain PyTorch loop on the same model.

Runs the real command in a subprocess, default worker layout (on one machine with no cluster to
join: one worker in the command's own process, Ray Train's local mode; `--workers N` for N Ray
Train worker actors), and prints its timeline (RUN/timeline.json: imports, data, Ray start, the
Train controller and worker start when there are actors, each epoch's passes and checkpoint, the
result, exit), the fixed overhead (wall time minus the sum of epoch times; target <= 10 s) and
the epoch ratio vaegen/plain (target <= 1.05). Both
sides run one training pass plus one test pass per epoch, same batch size and thread count. The
model is Pythae's MNIST VAE (latent 16, one hidden layer of 512). Compare figures within one run:
the load average is printed because a shared machine inflates every absolute time.

    python bench/train.py [--dataset mnist --data-dir ../shared/data/mnist] [--epochs 2]
                          [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.config import ModelConfig, TrainConfig
from trainer.datasets import load_dataset
from trainer.inputs import scale
from trainer.models import build_model, training_loss
from trainer.options import build_configs
from trainer.timeline import TIMELINE_FILE, format_timeline

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MODEL_FLAGS = ["--model", "vae", "--latent-dim", "16", "--hidden-dims", "512"]


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


def vaegen_train(data_flags: list[str], epochs: int) -> tuple[list[float], float, dict]:
    """The real command; returns its epoch times, wall time and RUN/timeline.json."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [str(Path(sys.executable).parent / "vaegen"), "train", *data_flags, *MODEL_FLAGS]
        command += ["--epochs", str(epochs), "--out", str(run)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        log = [json.loads(x) for x in (run / "train_log.jsonl").open()]
        timeline = json.loads((run / TIMELINE_FILE).read_text())
        layout = json.loads((run / "model" / "config.json").read_text())["train"].get("layout")
    timeline["layout"] = layout
    return [e["epoch_seconds"] for e in log], wall, timeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = "mnist" if SHARED_MNIST.exists() else "digits"
    parser.add_argument("--dataset", default=default)
    parser.add_argument("--data-dir", default=str(SHARED_MNIST) if default == "mnist" else None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, help="force N Ray Train worker actors")
    args = parser.parse_args()

    data_flags = ["--dataset", args.dataset]
    data_flags += ["--data-dir", args.data_dir] if args.data_dir else []
    data_flags += ["--workers", str(args.workers)] if args.workers else []
    side = f"--workers {args.workers}" if args.workers else "default layout"
    model_cfg, train_cfg = build_configs(
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, model="vae",
        latent_dim=16, hidden_dims=(512,),
    )  # fmt: skip
    threads = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    plain = plain_loop(model_cfg, train_cfg, threads)
    epochs, wall, timeline = vaegen_train(data_flags, args.epochs)
    p, r = statistics.median(plain), statistics.median(epochs)
    n = len(load_dataset(args.dataset, "train", data_dir=args.data_dir))
    print(
        f"dataset {args.dataset} ({n} train images), Pythae's VAE (mlp 512, latent 16), "
        f"batch {train_cfg.batch_size}, {args.epochs} epochs, {threads} threads; "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"worker layout: {timeline['layout']}")
    print("timeline of `vaegen train` (s from process start, + since the previous step):")
    print("\n".join(format_timeline(timeline, end=wall)))
    print(f"{'':24}{'median epoch s':>16}{'samples/s':>12}")
    print(f"{'plain PyTorch loop':24}{p:>16.2f}{n / p:>12,.0f}")
    print(f"{f'vaegen ({side})':24}{r:>16.2f}{n / r:>12,.0f}")
    print(f"ratio vaegen/plain epoch time: {r / p:.2f}x (target <= 1.05)")
    print(f"fixed overhead (wall {wall:.1f} s - epochs {sum(epochs):.1f} s): "
          f"{wall - sum(epochs):.1f} s (target <= 10 s)")  # fmt: skip


if __name__ == "__main__":
    main()
