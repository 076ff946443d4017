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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample CE on real images (trains this net) + CE on decoded ones (trains the
        decoder only: the weights are detached for that call), [B]."""
        ce_real = F.cross_entropy(self(real), y, reduction="none")
        frozen = {name: p.detach() for name, p in self.named_parameters()}
        ce_fake = F.cross_entropy(functional_call(self, frozen, (fake,)), y, reduction="none")
        return ce_real + ce_fake
