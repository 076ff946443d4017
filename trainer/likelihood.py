"""Per-sample log-likelihoods log p(x|z) of the decoder's output, in nats."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_SIGMA_RANGE = (-6.0, 2.0)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum_pixels log Bernoulli(x | sigmoid(logits)); x may be continuous in [0, 1]."""
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -nll.flatten(1).sum(1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """sum_pixels log N(x | mean, sigma^2) with one shared (possibly learned) sigma."""
    log_sigma = log_sigma.clamp(*LOG_SIGMA_RANGE)
    sq = ((x - mean) ** 2).flatten(1).sum(1)
    n = x[0].numel()
    return -0.5 * sq * torch.exp(-2 * log_sigma) - n * (log_sigma + 0.5 * math.log(2 * math.pi))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per latent dimension, closed form: [B, D]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)


def diag_normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)
