"""Likelihood metrics on real data: reconstruction errors, the ELBO and its terms, the IWAE bound.

All per-sample values are in nats per image. The ELBO reuses `VAE.forward`'s named terms (one
sampled z per image); reconstruction errors use the deterministic code z = mu. The IWAE bound
(Burda et al. 2016) is log (1/K) sum_k p(x|z_k[,y]) p(z_k) / q(z_k|x[,y]), evaluated in chunks
of samples and of images so memory stays bounded for K in the thousands; its log weights are the
training objective's (trainer.objectives.log_weights). A denoising model's reconstruction error
is also measured from corrupted inputs (`corrupted_reconstruction`), scored against clean images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.collapse import active_units
from trainer.corruption import Corruption, parse_corruption
from trainer.objectives import log_weights
from vaegen.errors import VaegenError
from vaegen.progress import progress


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-image values (float64 [N]) and the encoder means (float32 [N, latent])."""

    elbo: np.ndarray
    reconstruction: np.ndarray
    kl: np.ndarray
    mse: np.ndarray  # mean over pixels of (decode(mu) - x)^2
    bce: np.ndarray  # mean over pixels of BCE(decode_logits(mu), x)
    mu: np.ndarray
    kl_per_dim: np.ndarray  # closed-form KL(q(z_u|x) || p(z_u)) per unit, float64 [N, latent]


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _errors(logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean over pixels of the squared error and the BCE of the decoded mean."""
    mse = (torch.sigmoid(logits) - target).pow(2).flatten(1).mean(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return mse.double().cpu().numpy(), bce.double().cpu().numpy()


@torch.no_grad()
def iwae_log_likelihood(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    k: int,
    generator: torch.Generator,
    max_decodes: int = 4096,
) -> torch.Tensor:
    """IWAE bound on log p(x[|y]) per image, [B], with K importance samples from q(z|x[,y]).

    Samples are drawn `max_decodes // B` at a time; each chunk is reduced by logsumexp at once,
    so memory is O(max_decodes * pixels) whatever K is.
    """
    if k < 1:
        raise VaegenError(f"--iwae-k must be >= 1; got {k}")
    batch = x.shape[0]
    if batch > max_decodes:  # even one sample per image would exceed the budget: split images
        parts = [
            iwae_log_likelihood(
                model, x[sl], None if y is None else y[sl], k, generator, max_decodes
            )
            for sl in _batches(batch, max_decodes)
        ]
        return torch.cat(parts)
    mu, logvar = model.encode(x, y)
    std = torch.exp(0.5 * logvar)
    chunk = max(1, min(k, max_decodes // max(batch, 1)))
    partial = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        eps = torch.randn((n, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        # The training objective's own log weights, on the same kind of draws.
        log_w = log_weights(model.score_samples(x, y, mu + std * eps), mu, logvar)
        partial.append(torch.logsumexp(log_w.double(), dim=0))
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(k)


@torch.no_grad()
def evaluate_likelihood(
    model: torch.nn.Module,
    targets: np.ndarray,
    labels: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
) -> LikelihoodResult:
    """ELBO terms and reconstruction errors of `targets` (float32 [N, C, H, W] in [0, 1])."""
    if batch_size < 1:
        raise VaegenError(f"--batch-size must be >= 1; got {batch_size}")
    model = model.to(device).eval()
    conditional = bool(model.cfg.conditional)
    n = targets.shape[0]
    out: dict[str, list[np.ndarray]] = {
        key: [] for key in ("elbo", "rec", "kl", "mse", "bce", "mu", "kl_per_dim")
    }
    # sample_forward draws from the global RNG: fork it so the seed is ours and leaks nowhere.
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), progress("likelihood", n) as bar:
        torch.manual_seed(seed)
        for sl in _batches(n, batch_size):
            x = torch.from_numpy(targets[sl]).to(device)
            y = torch.from_numpy(labels[sl]).to(device) if conditional else None
            det = model(x, y)  # eval mode: z = mu
            mse, bce = _errors(det.logits, x)
            out["mse"].append(mse)
            out["bce"].append(bce)
            out["mu"].append(det.mu.float().cpu().numpy())
            out["kl_per_dim"].append(det.kl_per_dim.double().cpu().numpy())
            # The ELBO's Monte Carlo estimate (one z ~ q(z|x) per image): forward's own terms.
            mc = model.sample_forward(x, y)
            out["rec"].append(mc.reconstruction.double().cpu().numpy())
            out["kl"].append(mc.kl.double().cpu().numpy())
            out["elbo"].append(mc.elbo.double().cpu().numpy())
            bar.advance(sl.stop - sl.start)
    return LikelihoodResult(
        elbo=np.concatenate(out["elbo"]),
        reconstruction=np.concatenate(out["rec"]),
        kl=np.concatenate(out["kl"]),
        mse=np.concatenate(out["mse"]),
        bce=np.concatenate(out["bce"]),
        mu=np.concatenate(out["mu"]),
        kl_per_dim=np.concatenate(out["kl_per_dim"]),
    )


@torch.no_grad()
def corrupted_reconstruction(
    model: torch.nn.Module,
    targets: np.ndarray,
    labels: np.ndarray,
    corruption: Corruption | str,
    *,
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, object]:
    """Reconstruction error of the clean `targets` from corrupted copies (z = mu of the corrupted
    input), as a denoising model is trained: {"corruption", "mse_per_pixel", "bce_per_pixel"}.

    The whole set is corrupted in one draw, so the result depends on `seed`, not on batch size.
    """
    spec = parse_corruption(corruption) if isinstance(corruption, str) else corruption
    if spec is None:
        raise VaegenError("corrupted reconstruction needs a corruption, mask:P or gaussian:S")
    if batch_size < 1:
        raise VaegenError(f"--batch-size must be >= 1; got {batch_size}")
    model = model.to(device).eval()
    clean = torch.from_numpy(targets)
    noisy = spec.apply(clean, torch.Generator().manual_seed(seed))
    errors: list[tuple[np.ndarray, np.ndarray]] = []
    for sl in _batches(len(targets), batch_size):
        y = torch.from_numpy(labels[sl]).to(device) if model.cfg.conditional else None
        logits = model(noisy[sl].to(device), y).logits  # eval mode: z = mu
        errors.append(_errors(logits, clean[sl].to(device)))
    return {
        "corruption": spec.spec,
        "mse_per_pixel": float(np.concatenate([e[0] for e in errors]).mean()),
        "bce_per_pixel": float(np.concatenate([e[1] for e in errors]).mean()),
    }


@torch.no_grad()
def evaluate_iwae(
    model: torch.nn.Module,
    targets: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    device: torch.device,
    batch_size: int = 256,
    seed: int = 0,
    max_decodes: int = 4096,
) -> np.ndarray:
    """IWAE bound on log p(x[|y]) per image (float64 [N]); -mean is the NLL estimate."""
    if k < 1:
        raise VaegenError(f"--iwae-k must be >= 1; got {k}")
    model = model.to(device).eval()
    conditional = bool(model.cfg.conditional)
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = []
    with progress(f"IWAE k={k}", len(targets)) as bar:
        for sl in _batches(len(targets), batch_size):
            x = torch.from_numpy(targets[sl]).to(device)
            y = torch.from_numpy(labels[sl]).to(device) if conditional else None
            parts.append(iwae_log_likelihood(model, x, y, k, gen, max_decodes).cpu().numpy())
            bar.advance(sl.stop - sl.start)
    return np.concatenate(parts)


def bits_per_dim(nats: float, num_pixels: int) -> float:
    """A positive NLL in nats per image -> bits per pixel."""
    return nats / (num_pixels * math.log(2))


def _means(
    res: LikelihoodResult, iwae: np.ndarray | None, idx: np.ndarray | slice, num_pixels: int
) -> dict[str, float | None]:
    elbo = float(res.elbo[idx].mean())
    iwae_nll = None if iwae is None else float(-iwae[idx].mean())
    return {
        "elbo_nats": elbo,
        "elbo_bits_per_dim": bits_per_dim(-elbo, num_pixels),
        "reconstruction_nats": float(res.reconstruction[idx].mean()),
        "kl_nats": float(res.kl[idx].mean()),
        "iwae_nll_nats": iwae_nll,
        "iwae_nll_bits_per_dim": None if iwae_nll is None else bits_per_dim(iwae_nll, num_pixels),
        "mse_per_pixel": float(res.mse[idx].mean()),
        "bce_per_pixel": float(res.bce[idx].mean()),
    }


def summarize(
    res: LikelihoodResult,
    iwae: np.ndarray | None,
    iwae_k: int | None,
    labels: np.ndarray,
    class_names: list[str],
    num_pixels: int,
) -> dict[str, object]:
    """Overall means plus the same keys per class (keyed by class name), as in metrics.json."""
    summary: dict[str, object] = dict(_means(res, iwae, slice(None), num_pixels))
    summary["iwae_k"] = iwae_k if iwae is not None else None
    # The collapse guard's figures on the whole test split (trainer.collapse).
    summary["active_units"] = active_units(torch.from_numpy(res.mu))
    summary["kl_per_unit_nats"] = res.kl_per_dim.mean(0).tolist()
    summary["num_images"] = int(len(res.elbo))
    summary["num_pixels"] = int(num_pixels)
    per_class: dict[str, object] = {}
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        if len(idx):
            per_class[str(name)] = {**_means(res, iwae, idx, num_pixels), "count": int(len(idx))}
    summary["per_class"] = per_class
    return summary
