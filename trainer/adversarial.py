"""VAE-GAN (Larsen et al. 2016): a discriminator learns to tell real images from reconstructed
and prior-sampled ones, and its hidden layer Dis_l is the learned similarity of reconstruction.

The VAE's loss gains W * (gamma * Dis_l distance(x, x~) + GAN(x_p)): the Dis_l term (a
unit-variance Gaussian on the discriminator's features, as the paper's) reaches encoder and
decoder through the reconstruction x~; the non-saturating GAN term reaches the decoder only,
through prior samples x_p = Dec(u, y), which are what `vaegen generate` draws (the paper keeps
L_GAN off the encoder too). The pixel likelihood stays, so the ELBO, eval's IWAE and the exported
decoder's contract are unchanged. Stabilisers: the R1 gradient penalty on real images
(Mescheder et al. 2018; without it D reaches 99% on MNIST within an epoch and the ELBO falls
9 nats behind the plain CVAE's, with it D stays near 90% and the ELBO within 2 nats), one-sided
label smoothing (Salimans et al. 2016), a discriminator learning rate below the VAE's with
Adam's beta1 = 0.5 (Radford et al. 2016), no batch norm (real and fake batches never share
statistics), and the discriminator's weights held fixed inside the VAE's loss.

The discriminator and its optimizer live only in Ray Train's checkpoints (for --resume);
RUN/model/ and decoder.onnx never see them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainer.config import LossConfig, ModelConfig
from trainer.models import conv_sizes
from trainer.perceptual import feature_distance
from trainer.tally import Tally

CHANNELS = (32, 64)
HIDDEN = 256  # Dis_l
REAL_TARGET = 0.9  # one-sided label smoothing
# The R1 penalty's weight per pixel: Mescheder et al.'s gamma = 10 at MNIST's 784 pixels. The
# gradient a given separation needs shrinks as the images grow, so the weight grows with them
# (a flat 10 leaves an 8x8 digits discriminator stuck at a constant "fake").
R1_PER_PIXEL = 10.0 / 784
BETAS = (0.5, 0.999)
WEIGHTS_FILE = "discriminator.safetensors"
OPTIMIZER_FILE = "discriminator_optimizer.pt"


class Discriminator(nn.Module):
    """Strided 3x3 convs with LeakyReLU, the hidden layer Dis_l, and a real/fake logit."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for out_ch, (stride, _, _) in zip(CHANNELS, conv_sizes(h, w, len(CHANNELS)), strict=True):
            layers += [nn.Conv2d(c, out_ch, 3, stride, 1), nn.LeakyReLU(0.2)]
            c = out_ch
        _, fh, fw = conv_sizes(h, w, len(CHANNELS))[-1]
        layers += [nn.Flatten(), nn.Linear(c * fh * fw, HIDDEN), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [0, 1] -> (Dis_l features [B, HIDDEN], logit [B])."""
        hidden = self.features(x)
        return hidden, self.head(hidden).squeeze(1)


def discriminator_loss(
    logits: torch.Tensor, batch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE of logits for [real; reconstructed; prior-sampled] (B each), the real target
    smoothed, the two kinds of fake sharing the fake half (else D starts by calling everything
    fake). Also each image's correctness (0/1), real and fake."""
    real, fake = logits[:batch], logits[batch:]
    real_bce = F.binary_cross_entropy_with_logits(real, torch.full_like(real, REAL_TARGET))
    fake_bce = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    correct = {"real": (real > 0).double(), "fake": (fake < 0).double()}
    return real_bce + fake_bce, correct


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1/2 E ||d logit / d x||^2 on real images (Mescheder et al. 2018): keeps D from growing
    steep where the data is, so its verdict and Dis_l change smoothly as the decoder improves."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


class Adversary:
    """One worker's discriminator, its optimizer and (under DDP) its wrapper, and its terms."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig) -> None:
        self.net = Discriminator(model_cfg.image_shape)
        self.optimizer = torch.optim.Adam(
            self.net.parameters(), lr=loss_cfg.discriminator_lr, betas=BETAS
        )
        self.trained: nn.Module = self.net  # the DDP wrapper once `wrap` has run
        self.weight = loss_cfg.adversarial_weight
        self.gamma = loss_cfg.adversarial_gamma
        self.num_pixels = model_cfg.num_pixels

    def wrap(self, ddp: nn.Module) -> None:
        self.trained = ddp

    def vae_loss(
        self, real: torch.Tensor, recon: torch.Tensor, prior: torch.Tensor, tally: Tally
    ) -> torch.Tensor:
        """W * (gamma * Dis_l distance + GAN loss of the prior samples), batch mean; the
        discriminator's weights are detached, so only the VAE learns from it."""
        frozen = {name: p.detach() for name, p in self.net.named_parameters()}
        hidden, logits = functional_call(self.net, frozen, (torch.cat([real, recon, prior]),))
        hidden_real, hidden_recon, _ = hidden.chunk(3)
        logit_prior = logits.chunk(3)[2]
        dis_l = feature_distance([hidden_real.detach()], [hidden_recon], self.num_pixels)
        gan = F.binary_cross_entropy_with_logits(
            logit_prior, torch.ones_like(logit_prior), reduction="none"
        )
        tally.add_mean("train_dis_l", dis_l)
        tally.add_mean("train_gan", gan)
        return self.weight * (self.gamma * dis_l + gan).mean()

    def discriminator_step(
        self, real: torch.Tensor, recon: torch.Tensor, prior: torch.Tensor, tally: Tally
    ) -> None:
        """One Adam step of the discriminator on detached fakes; its accuracy into `tally`."""
        batch = len(real)
        real = real.detach().requires_grad_(True)
        _, logits = self.trained(torch.cat([real, recon.detach(), prior.detach()]))
        loss, correct = discriminator_loss(logits, batch)
        loss = loss + R1_PER_PIXEL * self.num_pixels * r1_penalty(logits[:batch], real)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        tally.add("disc_loss", loss.detach() * batch, batch)
        real, fake = correct["real"], correct["fake"].view(2, batch).mean(0)
        tally.add_mean("disc_accuracy", (real + fake) / 2)  # balanced: real and fake count half
        tally.add_mean("disc_accuracy_real", real)
        tally.add_mean("disc_accuracy_fake", fake)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        self.net.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, weights_only=True))
