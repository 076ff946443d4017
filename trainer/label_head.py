"""An auxiliary classifier that makes a CVAE's prior samples classifiable as their label.

The classifier learns from real images only (cross-entropy on (x, y)). The decoder then gets a
second cross-entropy: decode u ~ N(0, I) with label y and ask the classifier, with its weights
held fixed for this term, for y. The classifier never learns from decoded images, so the decoder
cannot make it collude; it is not eval's judge either, which stays an independent referee.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainer.config import ModelConfig

CHANNELS = (16, 32)


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate each image by its own integer (dx, dy) in [-pixels, pixels], zero fill."""
    if pixels <= 0:
        return x
    b, _, h, w = x.shape
    shifts = torch.randint(-pixels, pixels + 1, (b, 2), device=x.device).to(x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = 2 * shifts[:, 0] / w, 2 * shifts[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class LabelClassifier(nn.Module):
    """Two stride-2 conv layers and a linear head: small next to the VAE, translation-aware."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.image_shape
        layers: list[nn.Module] = []
        for out_ch in CHANNELS:
            layers += [nn.Conv2d(c, out_ch, 3, 2, 1), nn.ReLU()]
            c, h, w = out_ch, (h - 1) // 2 + 1, (w - 1) // 2 + 1
        layers += [nn.Flatten(), nn.Linear(c * h * w, cfg.num_classes)]
        self.net = nn.Sequential(*layers)
        # Real images shift by up to this many pixels each way (--label-shift): a head that has
        # seen shifted digits is harder for the decoder to satisfy with off-manifold strokes.
        self.shift = cfg.label_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample CE on real images (trains this net) + CE on decoded ones (trains the
        decoder only: the weights are detached for that call), [B]."""
        ce_real = F.cross_entropy(self(random_shift(real, self.shift)), y, reduction="none")
        frozen = {name: p.detach() for name, p in self.named_parameters()}
        ce_fake = F.cross_entropy(functional_call(self, frozen, (fake,)), y, reduction="none")
        return ce_real + ce_fake
