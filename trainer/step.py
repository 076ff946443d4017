"""One training step on one worker: the objective, plus the terms the run asks for.

The terms compose: the perceptual distance (trainer/perceptual.py) is added to each image's
reconstruction term, under any objective and inside M2's marginalization; the VAE-GAN
(trainer/adversarial.py) adds its terms to the VAE's loss and then steps its discriminator;
M2 (trainer/semisupervised.py) replaces the batch's ELBO by its labeled and unlabeled terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trainer.adversarial import Adversary
from trainer.config import TrainConfig
from trainer.corruption import Corruption, parse_corruption
from trainer.models import VAEOutput, label_loss
from trainer.objectives import objective_loss
from trainer.perceptual import PerceptualLoss
from trainer.semisupervised import Batch, PerImage, SemiSupervised
from trainer.tally import Tally


@dataclass
class Parts:
    """What a worker builds once beside the model."""

    optimizer: torch.optim.Optimizer
    train_cfg: TrainConfig
    perceptual: PerceptualLoss | None = None
    adversary: Adversary | None = None
    semi: SemiSupervised | None = None
    corruption: Corruption | None = field(init=False)  # parsed once, not per batch

    def __post_init__(self) -> None:
        self.corruption = parse_corruption(self.train_cfg.loss.corrupt)


def model_inputs(
    images: torch.Tensor, binarize_gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grey in [0, 1], the likelihood's target: a fresh binarization of it, or itself)."""
    grey = images.float().div_(255.0) if images.dtype == torch.uint8 else images
    x = torch.bernoulli(grey, generator=binarize_gen) if binarize_gen is not None else grey
    return grey, x


def _batch(images: torch.Tensor, parts: Parts, gen: torch.Generator | None) -> Batch:
    grey, x = model_inputs(images, gen)
    # Denoising: the encoder sees a corrupted copy, the likelihood scores x itself.
    corruption = parts.corruption
    return Batch(corruption.apply(x) if corruption is not None else x, x, grey)


def _perceptual_term(parts: Parts, tally: Tally) -> PerImage | None:
    """weight * the judge-feature distance of (grey, decoded mean), per image."""
    if parts.perceptual is None:
        return None
    perceptual, weight = parts.perceptual, parts.train_cfg.loss.perceptual_weight

    def term(grey: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        distance = perceptual(grey, torch.sigmoid(logits))
        tally.add_mean("train_perceptual", distance)
        return weight * distance

    return term


def record_elbo(tally: Tally, out: VAEOutput) -> None:
    """The epoch's ELBO terms, per image."""
    for name, value in (("elbo", out.elbo), ("reconstruction", out.reconstruction), ("kl", out.kl)):
        tally.add_mean(name, value)


def _supervised_loss(
    model: torch.nn.Module,
    parts: Parts,
    batch: Batch,
    labels: torch.Tensor,
    progress: float,
    tally: Tally,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The objective (+ label head, perceptual and VAE-GAN terms) on a labeled batch; also the
    VAE-GAN's fakes (reconstructions, prior samples) for its discriminator's step."""
    cfg = parts.train_cfg.loss
    conditional = (model.module if hasattr(model, "module") else model).cfg.conditional
    adversarial = parts.adversary is not None
    y = labels if conditional else None
    out = model(batch.x_in, y, target=batch.x, samples=cfg.iw_samples, prior=adversarial)
    loss = objective_loss(out, cfg, progress) + label_loss(out, cfg)
    extra = _perceptual_term(parts, tally)
    if extra is not None:
        loss = loss + extra(batch.grey, out.logits).mean()
    record_elbo(tally, out)
    if parts.adversary is None or out.prior_logits is None:
        return loss, None
    fakes = (torch.sigmoid(out.logits), torch.sigmoid(out.prior_logits))
    return loss + parts.adversary.vae_loss(batch.grey, *fakes, tally), fakes


def train_step(
    model: torch.nn.Module,
    parts: Parts,
    images: torch.Tensor,
    labels: torch.Tensor,
    progress: float,
    binarize_gen: torch.Generator | None,
    tally: Tally,
) -> None:
    """One optimizer step of the VAE (then of the discriminator, for a VAE-GAN)."""
    cfg = parts.train_cfg
    batch = _batch(images, parts, binarize_gen)
    fakes = None
    if parts.semi is not None:  # M2: `labels` are hidden; a labeled batch comes from the pool
        x_l, y_l = parts.semi.labeled_batch()
        labeled = _batch(x_l, parts, binarize_gen)
        weight = cfg.loss.kl_weight(progress)
        extra = _perceptual_term(parts, tally)
        loss = parts.semi.loss(model, batch, labeled, y_l, weight, tally, extra)
    else:
        loss, fakes = _supervised_loss(model, parts, batch, labels, progress, tally)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parts.optimizer.step()
    if parts.adversary is not None and fakes is not None:
        parts.adversary.discriminator_step(batch.grey, *fakes, tally)
