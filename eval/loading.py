"""Eval's inputs: RUN's model and the real data it is scored on (RUN's training data unless
--dataset/--data-dir say otherwise)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.options import EvalOptions
from trainer.inputs import evaluation_inputs
from trainer.run import MODEL, TRAIN_LOG
from vaegen.errors import VaegenError


@dataclass(frozen=True)
class RealData:
    """The real test split, where it came from, and its model inputs."""

    spec: str
    data_dir: str | None
    image_size: int | None
    test: Any  # trainer.datasets.Dataset
    binarized: bool
    targets: np.ndarray  # the test images as the model reads them

    @property
    def class_names(self) -> list[str]:
        return list(self.test.class_names)

    def load_train(self) -> tuple[np.ndarray, np.ndarray]:
        from trainer.datasets import load_dataset

        train = load_dataset(self.spec, "train", data_dir=self.data_dir, image_size=self.image_size)
        return train.images, train.labels

    def fingerprint(self) -> str:
        from trainer.datasets import dataset_fingerprint

        return dataset_fingerprint(self.spec, data_dir=self.data_dir, image_size=self.image_size)

    def section(self) -> dict[str, Any]:
        """metrics.json's "data" keys known at load time."""
        return {
            "dataset": self.spec,
            "split": "test",
            "num_images": len(self.test),
            "binarized": self.binarized,
        }


@dataclass(frozen=True)
class LoadedRun:
    model: torch.nn.Module  # on the eval device, in eval mode
    info: Any  # trainer.checkpoint.ModelInfo
    real: RealData

    @property
    def train_log(self) -> Path:
        model_dir = self.info.model_dir
        return (model_dir.parent if model_dir.name == MODEL else model_dir) / TRAIN_LOG

    def run_section(self, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """metrics.json's "run" keys."""
        cfg, train = self.info.config, self.info.train
        return {
            "run_dir": str(run_dir),
            "model": cfg.model,
            "arch": cfg.arch,
            "likelihood": cfg.likelihood,
            "latent_dim": cfg.latent_dim,
            "image_shape": list(cfg.image_shape),
            "class_names": self.info.class_names or self.real.class_names,
            "train_dataset": train.get("dataset"),
            "binarize": bool(train.get("binarize")),
        }


def _dataset_args(info: Any, opts: EvalOptions) -> tuple[str, str | None, int | None]:
    """(spec, data_dir, image_size): RUN's training data unless --dataset/--data-dir say."""
    train = info.train or {}
    spec = opts.dataset or train.get("dataset") or info.dataset.get("name")
    if not spec:
        raise VaegenError("RUN's config names no dataset; pass --dataset")
    data_dir = opts.data_dir
    if data_dir is None and opts.dataset in (None, train.get("dataset")):
        data_dir = train.get("data_dir")
    return str(spec), data_dir, train.get("image_size")


def _check_dataset(test: Any, cfg: Any, spec: str) -> None:
    if tuple(test.image_shape) != tuple(cfg.image_shape):
        raise VaegenError(
            f"dataset {spec} has {list(test.image_shape)} images, the model "
            f"{list(cfg.image_shape)}; pass the training --dataset/--data-dir"
        )
    if cfg.conditional and test.num_classes != cfg.num_classes:
        raise VaegenError(
            f"dataset {spec} has {test.num_classes} classes, the CVAE {cfg.num_classes}"
        )


def load_run(run_dir: str | os.PathLike[str], opts: EvalOptions, device: torch.device) -> LoadedRun:
    """RUN's model and the real test split, checked to fit each other."""
    from trainer.checkpoint import load_model
    from trainer.datasets import load_dataset

    model, info = load_model(run_dir)
    cfg = info.config
    spec, data_dir, image_size = _dataset_args(info, opts)
    test = load_dataset(spec, "test", data_dir=data_dir, image_size=image_size)
    _check_dataset(test, cfg, spec)
    # Older or hand-written configs may pair binarize with a gaussian likelihood: not binarized.
    binarized = cfg.likelihood == "bernoulli" and (
        bool(info.train.get("binarize")) or opts.binarized_test
    )
    targets = evaluation_inputs(test.images, binarized)
    real = RealData(spec, data_dir, image_size, test, binarized, targets)
    return LoadedRun(model.to(device).eval(), info, real)
