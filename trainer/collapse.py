"""Posterior-collapse guard: active latent units, KL per unit, and a one-line warning.

A unit u is active when Cov_x(E_q[z_u|x]) > 0.01 (Burda et al. 2016, section 5.2): the code it
carries changes with the image. A collapsed VAE's decoder ignores z, its KL is near zero and no
unit is active; free bits and KL warm-up are the usual cures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.likelihood import gaussian_kl

ACTIVE_UNIT_COV = 0.01
# Under this much KL (nats per image, all units together) the code carries almost nothing.
COLLAPSE_KL_NATS = 0.5
# Held-out images the guard encodes each epoch: enough for a stable covariance, cheap to encode.
HELD_OUT_IMAGES = 2000
_ENCODE_BATCH = 512


@dataclass(frozen=True)
class LatentUsage:
    active_units: int
    kl_per_unit: tuple[float, ...]  # mean over images of the closed-form KL per unit, nats

    @property
    def kl(self) -> float:
        return float(sum(self.kl_per_unit))


def unit_activity(mu: torch.Tensor) -> torch.Tensor:
    """Cov_x(E_q[z_u|x]) per unit, [D], from the encoder means mu [N, D] of N images."""
    return mu.double().var(dim=0) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=torch.float64)


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_UNIT_COV) -> int:
    return int((unit_activity(mu) > threshold).sum())


@torch.no_grad()
def latent_usage(model: Any, x: torch.Tensor, y: torch.Tensor | None) -> LatentUsage:
    """Encode x (and y, for a CVAE) in batches: active units and mean KL per unit."""
    mus, kls = [], []
    for start in range(0, len(x), _ENCODE_BATCH):
        sl = slice(start, start + _ENCODE_BATCH)
        mu, logvar = model.encode(x[sl], None if y is None else y[sl])
        mus.append(mu)
        kls.append(gaussian_kl(mu, logvar).double().sum(0))
    kl_per_unit = torch.stack(kls).sum(0) / max(len(x), 1)
    return LatentUsage(active_units(torch.cat(mus)), tuple(kl_per_unit.tolist()))


def collapse_warning(
    usage: LatentUsage, *, beta: float = 1.0, kl_threshold: float = COLLAPSE_KL_NATS
) -> str | None:
    """The one-line warning when the posterior has collapsed, else None (a pure decision)."""
    if usage.kl >= kl_threshold and usage.active_units > 0:
        return None
    cures = "raise --free-bits (e.g. 0.5 nats per unit) or --kl-warmup-epochs"
    if beta > 1:
        cures += f", or lower --beta ({beta:g})"
    return (
        f"posterior collapse: KL {usage.kl:.3g} nats, {usage.active_units} of "
        f"{len(usage.kl_per_unit)} latent units active; the decoder ignores z: {cures}"
    )


def latent_metrics(
    model: Any, images: np.ndarray, labels: np.ndarray, *, beta: float = 1.0
) -> dict[str, Any]:
    """The guard's per-epoch fields for train_log.jsonl, from the first held-out images."""
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(images[:HELD_OUT_IMAGES])).float()
        y = torch.from_numpy(labels[:HELD_OUT_IMAGES]) if model.cfg.conditional else None
        usage = latent_usage(model, x, y)
    finally:
        model.train(was_training)
    return {
        "active_units": usage.active_units,
        "kl_per_unit": list(usage.kl_per_unit),
        "collapse_warning": collapse_warning(usage, beta=beta),
    }
