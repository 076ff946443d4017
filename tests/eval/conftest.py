"""Fixtures for the eval tests: digits (8x8), tiny models trained with a plain torch loop, a
trained judge in a per-session cache, and helpers to write generated-dataset directories."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainer.checkpoint import save_model
from trainer.config import LossConfig, ModelConfig
from trainer.models import VAE, build_model, training_loss


@pytest.fixture(scope="session")
def digits() -> tuple[Any, Any]:
    from trainer.datasets import load_dataset

    return load_dataset("digits", "train"), load_dataset("digits", "test")


def train_tiny(cfg: ModelConfig, images: np.ndarray, labels: np.ndarray, epochs: int) -> VAE:
    """A few epochs of a plain torch loop (no Ray): enough to beat an untrained decoder."""
    torch.manual_seed(0)
    model = build_model(cfg)
    x_all = torch.from_numpy(images).float() / 255.0
    y_all = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            y = y_all[idx] if cfg.conditional else None
            loss = training_loss(model(x_all[idx], y), LossConfig(), epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def save_run(
    run_dir: Path, model: VAE, dataset: Any, train_extra: dict[str, Any] | None = None
) -> Path:
    """RUN/model/ as the trainer writes it, plus a small train_log.jsonl."""
    train = {"dataset": "digits", "data_dir": None, "image_size": None, "binarize": False}
    train.update(train_extra or {})
    save_model(
        run_dir / "model",
        model,
        dataset={
            "name": dataset.name,
            "image_shape": list(dataset.image_shape),
            "class_names": list(dataset.class_names),
        },
        train=train,
        metrics={},
    )
    log = [
        {"epoch": e, "train_elbo": -40.0 + 2 * e, "test_elbo": -41.0 + 2 * e, "train_kl": 3.0 + e}
        for e in range(1, 4)
    ]
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return run_dir


CVAE_CFG = ModelConfig(model="cvae", image_shape=(1, 8, 8), latent_dim=8, hidden_dims=(128, 64))
VAE_CFG = ModelConfig(model="vae", image_shape=(1, 8, 8), latent_dim=8, hidden_dims=(128, 64))


@pytest.fixture(scope="session")
def cvae_model(digits: tuple[Any, Any]) -> VAE:
    train, _ = digits
    return train_tiny(CVAE_CFG, train.images, train.labels, epochs=15)


@pytest.fixture(scope="session")
def cvae_run(tmp_path_factory: pytest.TempPathFactory, cvae_model: VAE, digits: Any) -> Path:
    return save_run(tmp_path_factory.mktemp("cvae_run"), cvae_model, digits[0])


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory: pytest.TempPathFactory, digits: tuple[Any, Any]) -> Path:
    train, _ = digits
    model = train_tiny(VAE_CFG, train.images, train.labels, epochs=3)
    return save_run(tmp_path_factory.mktemp("vae_run"), model, train)


@pytest.fixture(scope="session")
def judge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("judges")


@pytest.fixture(scope="session")
def digits_judge(digits: tuple[Any, Any], judge_cache: Path) -> Any:
    from eval.judge import JudgeSpec, get_judge
    from trainer.datasets import dataset_fingerprint

    train, test = digits
    spec = JudgeSpec(image_shape=train.image_shape, num_classes=train.num_classes)
    return get_judge(
        spec,
        dataset_fingerprint("digits"),
        lambda: (train.images, train.labels),
        test.images,
        test.labels,
        list(test.class_names),
        torch.device("cpu"),
        cache_dir=judge_cache,
    )


def write_generated(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    fmt: str = "parquet",
    encoding: str = "raw",
    shard_size: int = 100,
) -> Path:
    """A DATASET dir in the workers' documented layout, shards written by workers.writers."""
    writers = pytest.importorskip("workers.writers")
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    ids = np.arange(len(images), dtype=np.int64)
    for index, start in enumerate(range(0, len(images), shard_size)):
        sl = slice(start, start + shard_size)
        written = writers.write_shard(
            root,
            fmt=fmt,
            encoding=encoding,
            index=index,
            ids=ids[sl],
            labels=labels[sl],
            images=images[sl],
            class_names=class_names,
        )
        shards.append(
            {
                "index": index,
                "file": written.file,
                "rows": len(ids[sl]),
                "first_id": start,
                "sha256": written.sha256,
                "seed": index,
            }
        )
    if fmt == "imagefolder":
        lines = ["id,label,label_name,path"]
        for i, lab in zip(ids.tolist(), labels.tolist(), strict=True):
            name = "" if lab < 0 else class_names[lab]
            lines.append(f"{i},{lab},{name},{writers.image_path(lab, name, i, class_names)}")
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    values, counts = np.unique(labels, return_counts=True)
    manifest = {
        "kind": "vaegen-dataset",
        "manifest_version": 1,
        "vaegen_version": "0.1.0",
        "complete": True,
        "spec": {
            "model_sha256": hashlib.sha256(b"test").hexdigest(),
            "num_samples": int(len(images)),
            "class_counts": {str(v): int(c) for v, c in zip(values, counts, strict=True)},
            "seed": 0,
            "shard_size": shard_size,
            "batch_size": 64,
            "format": fmt,
            "encoding": encoding,
        },
        "image_shape": list(images.shape[1:]),
        "image_dtype": "uint8",
        "class_names": list(class_names),
        "num_shards": len(shards),
        "num_rows": int(len(images)),
        "shards": shards,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="session")
def make_generated() -> Callable[..., Path]:
    """write_generated as a fixture: importlib mode cannot import conftest by name."""
    return write_generated


@pytest.fixture(scope="session")
def make_run() -> Callable[..., Path]:
    """save_run as a fixture."""
    return save_run
