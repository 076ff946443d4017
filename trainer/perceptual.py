"""Feature perceptual loss (DFC-VAE, Hou et al. 2017): the reconstruction term also counts the
distance between a fixed network's features of the input and of the reconstruction.

The fixed network is the judge of the training dataset (trainer/judge_net.py), trained offline
on its real training split by `vaegen judge` or `vaegen eval`; it is found on the driver, before
Ray starts (--judge JUDGE, else the judge cache), never downloaded or trained here. Its bytes
travel to the workers through Ray's object store, checked there against the sha256 the driver
recorded in the run's config.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import ModelConfig, TrainConfig
from trainer.judge_net import JudgeNet, JudgeSpec, cache_key, judge_cache_dir, load_judge_file
from vaegen.contracts import sha256_file
from vaegen.errors import VaegenError

ARTIFACT_WEIGHTS = "judge.safetensors"  # in a JUDGE folder (eval.judge_artifact.WEIGHTS_FILE)


def feature_distance(
    real: list[torch.Tensor], fake: list[torch.Tensor], num_pixels: int
) -> torch.Tensor:
    """sum over layers of num_pixels / 2 * mean((real - fake)^2), per image [B].

    DFC-VAE's per-layer mean squared error, scaled by the image's pixel count so that weight 1
    weighs each layer like a unit-variance Gaussian over the pixels (nats, as the likelihood).
    """
    terms = [(r - f).pow(2).flatten(1).mean(1) for r, f in zip(real, fake, strict=True)]
    return 0.5 * num_pixels * torch.stack(terms).sum(0)


def _weights_path(judge: str) -> Path:
    """--judge names a JUDGE folder, its judge.onnx or judge.safetensors, or a cache entry."""
    path = Path(judge)
    if path.is_dir():
        path = path / ARTIFACT_WEIGHTS
    elif path.suffix == ".onnx":
        path = path.with_name(ARTIFACT_WEIGHTS)
    if not path.is_file():
        raise VaegenError(f"--judge {judge}: no judge weights at {path} (see `vaegen judge`)")
    return path


def _cached_path(model_cfg: ModelConfig, train_cfg: TrainConfig, fingerprint: str) -> Path:
    """The cache entry of the default judge spec, the one `vaegen judge` and eval train."""
    spec = JudgeSpec(model_cfg.image_shape, model_cfg.num_classes)
    path = judge_cache_dir() / f"{cache_key(fingerprint, spec)}.safetensors"
    if not path.is_file():
        raise VaegenError(
            f"--perceptual-weight needs the judge of {train_cfg.dataset}, and the judge cache "
            f"({path.parent}) has none: run `vaegen judge --dataset {train_cfg.dataset} "
            "--out JUDGE` and pass --judge JUDGE"
        )
    return path


def resolve_judge(model_cfg: ModelConfig, train_cfg: TrainConfig) -> TrainConfig:
    """Driver side: find and check the judge; `train_cfg` with its weights path and sha256.

    The judge must be trained on this run's dataset (its fingerprint), take its image shape,
    and have every --perceptual-layers layer. Without --perceptual-weight, `train_cfg` as is.
    """
    from trainer.datasets import dataset_fingerprint

    loss = train_cfg.loss
    if loss.perceptual_weight == 0:
        return train_cfg
    fingerprint = dataset_fingerprint(
        train_cfg.dataset, data_dir=train_cfg.data_dir, image_size=train_cfg.image_size
    )
    if loss.judge is not None:
        path = _weights_path(loss.judge)
    else:
        path = _cached_path(model_cfg, train_cfg, fingerprint)
    net, spec, meta = load_judge_file(path)
    if meta.get("dataset_fingerprint") != fingerprint:
        raise VaegenError(
            f"judge {path} was trained on {meta.get('dataset')!r}, not on this run's "
            f"{train_cfg.dataset}; write one with `vaegen judge --dataset {train_cfg.dataset}`"
        )
    if tuple(spec.image_shape) != tuple(model_cfg.image_shape):
        raise VaegenError(f"judge {path} takes {spec.image_shape} images, the model does not")
    if max(loss.perceptual_layers) > net.num_layers:
        raise VaegenError(
            f"--perceptual-layers {loss.perceptual_layers}: the judge's are 1..{net.num_layers}"
        )
    resolved = dataclasses.replace(
        loss, judge_weights=str(path.resolve()), judge_sha256=sha256_file(path)
    )
    return dataclasses.replace(train_cfg, loss=resolved)


def judge_payload(train_cfg: TrainConfig) -> dict[str, Any] | None:
    """What the workers need to rebuild the resolved judge: its spec and its file's bytes."""
    loss = train_cfg.loss
    if loss.judge_weights is None:
        return None
    _, spec, _ = load_judge_file(loss.judge_weights)
    return {"spec": spec.to_dict(), "weights": Path(loss.judge_weights).read_bytes()}


class PerceptualLoss(nn.Module):
    """The frozen judge's feature distance between target images and reconstructions, [B]."""

    def __init__(self, net: JudgeNet, layers: tuple[int, ...], num_pixels: int) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.layers = layers
        self.num_pixels = num_pixels

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # BN keeps its running statistics: the judge is fixed

    def forward(self, target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Both in [0, 1], [B, C, H, W]: target features carry no gradient, recon's do."""
        with torch.no_grad():
            real = self.net.layer_outputs(target, self.layers)
        return feature_distance(real, self.net.layer_outputs(recon, self.layers), self.num_pixels)


def perceptual_loss(payload: dict[str, Any], train_cfg: TrainConfig) -> PerceptualLoss:
    """Worker side: the judge from the driver's payload, checked against the recorded sha256."""
    from safetensors.torch import load

    blob = payload["weights"]
    if hashlib.sha256(blob).hexdigest() != train_cfg.loss.judge_sha256:
        raise VaegenError("the judge's bytes on this worker do not match the run's judge_sha256")
    spec = JudgeSpec.from_dict(payload["spec"])
    net = JudgeNet(spec)
    net.load_state_dict(load(blob))
    c, h, w = spec.image_shape
    return PerceptualLoss(net, train_cfg.loss.perceptual_layers, c * h * w)
