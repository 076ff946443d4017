"""A learned class-conditional prior p(z|y) = N(mu_y, diag sigma_y^2), as a map in the decoder.

The model keeps its latent u ~ N(0, I) and the decoder computes z = mu_y + sigma_y * u first. The
encoder's q(u|x,y) against N(0, I) then has the closed-form KL of q(z|x,y) against p(z|y) (the
same affine map sends one pair to the other, and KL is invariant under it), so eval's ELBO/IWAE
and the exported decoder's contract (input z ~ N(0, I), y) hold unchanged: the map is part of
decoder.onnx. mu_y = 0 and sigma_y = 1 at initialisation: training starts from the plain CVAE.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassPrior(nn.Module):
    def __init__(self, num_classes: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(num_classes, latent_dim))
        self.log_sigma = nn.Parameter(torch.zeros(num_classes, latent_dim))

    def forward(self, u: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """u [B, D] standard-normal latents, onehot [B, K] -> z = mu_y + sigma_y * u."""
        return onehot @ self.mu + torch.exp(onehot @ self.log_sigma) * u
