"""Semi-supervised CVAE, M2 of Kingma et al. 2014: a classifier q(y|x) beside q(z|x,y), p(x|y,z).

A labeled image contributes L(x, y) = -ELBO(x, y) - log p(y) (p(y) uniform). An unlabeled one
marginalizes y under the classifier: U(x) = sum_y q(y|x) L(x, y) - H(q(y|x)), a bound on
-log p(x) that is tight when q(y|x) is the model's posterior p(y|x). The classifier also learns
from the labeled images, J^a = J + alpha * E_labeled[-log q(y|x)], alpha = 0.1 * N (the paper's;
--classifier-weight sets it). Each step draws a batch of labeled images beside the usual one of
unlabeled images (the labeled ones oversampled, as the paper's minibatches do), so per labeled
image the cross-entropy weighs alpha / N_labeled against its L(x, y).

The labeled subset is balanced per class and seeded; the driver hides every other label (-1)
before the training data reaches the workers. q(y|x) is the judge's conv net inside the model
(RUN/model keeps it; the exported decoder is a plain CVAE's), its input the encoder's, shifted
by up to 2 pixels each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.label_head import random_shift
from trainer.models import VAEOutput
from trainer.tally import Tally
from vaegen.errors import VaegenError

ALPHA_PER_IMAGE = 0.1  # alpha = 0.1 * N (Kingma et al. 2014, section 4)
HIDDEN_LABEL = -1
MAX_SHIFT = 2  # pixels, at most an eighth of the image side
_SUBSET_STREAM = 0x4D32  # the labeled subset's own random stream, apart from training's
PerImage = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (grey, logits) -> [B]


def labeled_indices(labels: np.ndarray, per_class: int, num_classes: int, seed: int) -> np.ndarray:
    """`per_class` images of each class, drawn under `seed`, sorted: the same on every run."""
    order = np.random.default_rng([seed, _SUBSET_STREAM]).permutation(len(labels))
    picked = []
    for c in range(num_classes):
        of_class = order[labels[order] == c]
        if len(of_class) < per_class:
            raise VaegenError(
                f"--labels-per-class {per_class}: class {c} has {len(of_class)} training images"
            )
        picked.append(of_class[:per_class])
    return np.sort(np.concatenate(picked))


def hide_labels(labels: np.ndarray, train_cfg: TrainConfig, num_classes: int) -> np.ndarray:
    """The training labels a worker may see: the labeled subset's, HIDDEN_LABEL elsewhere."""
    per_class = int(train_cfg.labels_per_class or 0)
    keep = labeled_indices(labels, per_class, num_classes, train_cfg.seed)
    hidden = np.full(len(labels), HIDDEN_LABEL, dtype=np.int64)
    hidden[keep] = labels[keep]
    return hidden


def marginal_loss(neg_elbo: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """U(x) = sum_y q(y|x) (L(x, y) - log p(y)) - H(q(y|x)), per image [B], p(y) uniform.

    neg_elbo [K, B]: -ELBO(x_b, y = k); log_q [B, K]: log q(y = k | x_b).
    """
    q = log_q.exp()
    log_py = -math.log(log_q.shape[1])
    return (q * (neg_elbo.T - log_py)).sum(1) + (q * log_q).sum(1)


@dataclass(frozen=True)
class Batch:
    """Images as the model reads them: `x_in` (encoder, classifier), `x` (likelihood target),
    `grey` (before binarization, for feature losses)."""

    x_in: torch.Tensor
    x: torch.Tensor
    grey: torch.Tensor

    def repeat(self, k: int) -> Batch:
        """K copies, copy j at rows j * B .. (j + 1) * B - 1."""
        return Batch(*(t.repeat(k, 1, 1, 1) for t in (self.x_in, self.x, self.grey)))

    def cat(self, other: Batch) -> Batch:
        return Batch(
            torch.cat([self.x_in, other.x_in]),
            torch.cat([self.x, other.x]),
            torch.cat([self.grey, other.grey]),
        )


def classifier_input(x: torch.Tensor) -> torch.Tensor:
    _, _, h, w = x.shape
    return random_shift(x, min(MAX_SHIFT, h // 8, w // 8))


class SemiSupervised:
    """One worker's labeled pool and M2's per-step loss."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, train_cfg: TrainConfig, rank: int, batch: int
    ) -> None:
        keep = np.flatnonzero(labels != HIDDEN_LABEL)
        self.images = torch.from_numpy(images[keep])
        self.labels = torch.from_numpy(labels[keep])
        alpha = train_cfg.loss.classifier_weight
        alpha = ALPHA_PER_IMAGE * len(labels) if alpha is None else alpha
        self.label_weight = alpha / len(keep)
        self.batch = batch
        self.gen = torch.Generator().manual_seed(train_cfg.seed * 7919 + rank + _SUBSET_STREAM)

    def labeled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch drawn from the labeled pool with replacement (it may be smaller)."""
        pick = torch.randint(len(self.labels), (self.batch,), generator=self.gen)
        return self.images[pick], self.labels[pick]

    def loss(
        self,
        model: torch.nn.Module,
        unlabeled: Batch,
        labeled: Batch,
        y: torch.Tensor,
        kl_weight: float,
        tally: Tally,
        extra: PerImage | None = None,
    ) -> torch.Tensor:
        """mean U(x_u) + mean L(x_l, y) + alpha / N_l * mean CE, in one forward of the model
        (every class for each unlabeled image, then the labeled images) and one of q(y|x).
        `extra(grey, logits)` adds a per-image term to each -ELBO (the perceptual loss)."""
        vae = model.module if hasattr(model, "module") else model
        k, b = vae.cfg.num_classes, len(unlabeled.x)
        both = unlabeled.repeat(k).cat(labeled)
        out = model(both.x_in, torch.cat([torch.arange(k).repeat_interleave(b), y]), target=both.x)
        neg_elbo = out.reconstruction + kl_weight * out.kl
        if extra is not None:
            neg_elbo = neg_elbo + extra(both.grey, out.logits)
        seen = classifier_input(torch.cat([unlabeled.x_in, labeled.x_in]))
        log_q = F.log_softmax(vae.classifier(seen), 1)
        u = marginal_loss(neg_elbo[: k * b].view(k, b), log_q[:b])
        ce = F.nll_loss(log_q[b:], y)
        _record(tally, out, log_q, u, y, k)
        return u.mean() + (neg_elbo[k * b :] + math.log(k)).mean() + self.label_weight * ce


def _record(
    tally: Tally, out: VAEOutput, log_q: torch.Tensor, u: torch.Tensor, y: torch.Tensor, k: int
) -> None:
    """The epoch's terms: the ELBO's under q(y|x) for the unlabeled images, the M2 bound -U,
    q's entropy there and its accuracy on the labeled batch."""
    b = len(u)
    q = log_q[:b].exp().T  # [K, B]
    for name, value in (("reconstruction", out.reconstruction), ("kl", out.kl)):
        tally.add_mean(name, (q * value[: k * b].view(k, b)).sum(0))
    tally.add_mean("elbo", -(q * (out.reconstruction + out.kl)[: k * b].view(k, b)).sum(0))
    tally.add_mean("train_m2_bound", -u)
    tally.add_mean("train_classifier_entropy", -(q.T * log_q[:b]).sum(1))
    tally.add_mean("train_classifier_accuracy", (log_q[b:].argmax(1) == y).double())


@torch.no_grad()
def classifier_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1.0 where q(y|x) (eval mode) predicts y, else 0.0, [B]."""
    return (model.classifier(x).argmax(1) == y).double()


@torch.no_grad()
def classifier_accuracy(
    model: torch.nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    batch_size: int = 1024,
) -> tuple[float, dict[str, float]]:
    """q(y|x)'s accuracy on float model inputs [N, C, H, W], overall and per class (eval)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        preds = (
            torch.cat(
                [
                    model.classifier(
                        torch.from_numpy(inputs[s : s + batch_size]).to(device)
                    ).argmax(1)
                    for s in range(0, len(inputs), batch_size)
                ]
            )
            .cpu()
            .numpy()
        )
    finally:
        model.train(was_training)
    per_class = {
        str(name): float((preds[labels == c] == c).mean())
        for c, name in enumerate(class_names)
        if (labels == c).any()
    }
    return float((preds == labels).mean()), per_class
