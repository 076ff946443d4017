"""VAE and CVAE (MLP or conv), Gaussian encoder q(z|x[,y]), and the ELBO as named terms.

This module knows nothing of the training loop; `forward` returns per-sample terms that training
and evaluation both reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import LossConfig, ModelConfig
from trainer.judge_net import JudgeNet, JudgeSpec
from trainer.label_head import LabelClassifier
from trainer.likelihood import (
    bernoulli_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    standard_normal_log_prob,
)
from trainer.prior import ClassPrior


@dataclass
class VAEOutput:
    """Per-sample terms in nats. elbo = -(reconstruction + kl)."""

    reconstruction: torch.Tensor  # -log p(x|z), [B]
    kl: torch.Tensor  # KL(q(z|x) || p(z)), [B]
    kl_per_dim: torch.Tensor  # [B, D]
    elbo: torch.Tensor  # [B]
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    logits: torch.Tensor  # decoder pre-activation, [B, C, H, W]
    # All K draws behind `reconstruction` (K = forward's `samples`), for the IWAE objectives.
    samples: ImportanceSamples | None = None
    # The label head's loss, [B] (trainer/label_head.py): set by training forwards only.
    label_loss: torch.Tensor | None = None
    # Decoded prior draws u ~ N(0, I) with the batch's labels, [B, C, H, W]: training forwards
    # with a label head or `prior=True` (the VAE-GAN's fakes, trainer/adversarial.py).
    prior_logits: torch.Tensor | None = None


@dataclass
class ImportanceSamples:
    """K draws z_k ~ q(z|x[,y]) per image and their log densities in nats: the IWAE bound's
    inputs (trainer.objectives.log_weights), shared by training and eval."""

    z: torch.Tensor  # [K, B, D]
    log_px: torch.Tensor  # log p(x|z_k[,y]), [K, B]
    log_pz: torch.Tensor  # log p(z_k), [K, B]
    logits: torch.Tensor  # [K, B, C, H, W]


def conv_sizes(height: int, width: int, stages: int) -> list[tuple[int, int, int]]:
    """(stride, h, w) after each conv stage: stride 2 while the map stays >= 2 on each side."""
    sizes = []
    for _ in range(stages):
        stride = 2 if min(height, width) >= 4 else 1
        height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
        sizes.append((stride, height, width))
    return sizes


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.image_shape
        cond = cfg.num_classes if cfg.conditional else 0
        if cfg.arch == "mlp":
            self.features: nn.Module = nn.Flatten()
            width = cfg.num_pixels
        else:
            layers: list[nn.Module] = []
            channels = c
            for out_ch, (stride, _, _) in zip(
                cfg.conv_channels, conv_sizes(h, w, len(cfg.conv_channels)), strict=True
            ):
                layers += [nn.Conv2d(channels, out_ch, 3, stride, 1), nn.ReLU()]
                channels = out_ch
            layers.append(nn.Flatten())
            self.features = nn.Sequential(*layers)
            _, fh, fw = conv_sizes(h, w, len(cfg.conv_channels))[-1]
            width = channels * fh * fw
        mlp: list[nn.Module] = []
        width += cond
        for hidden in cfg.hidden_dims:
            mlp += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.mlp = nn.Sequential(*mlp)
        self.head = nn.Linear(width, 2 * cfg.latent_dim)

    def forward(
        self, x: torch.Tensor, onehot: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        if onehot is not None:
            feats = torch.cat([feats, onehot], dim=1)
        mu, logvar = self.head(self.mlp(feats)).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.image_shape
        self.image_shape = cfg.image_shape
        self.prior = ClassPrior(cfg.num_classes, cfg.latent_dim) if cfg.prior == "class" else None
        width = cfg.latent_dim + (cfg.num_classes if cfg.conditional else 0)
        mlp: list[nn.Module] = []
        for hidden in reversed(cfg.hidden_dims):
            mlp += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        if cfg.arch == "mlp":
            mlp.append(nn.Linear(width, cfg.num_pixels))
            self.mlp = nn.Sequential(*mlp)
            self.body: nn.Module = nn.Unflatten(1, cfg.image_shape)
            return
        sizes = conv_sizes(h, w, len(cfg.conv_channels))
        channels = list(cfg.conv_channels)
        _, fh, fw = sizes[-1]
        mlp += [nn.Linear(width, channels[-1] * fh * fw), nn.ReLU()]
        self.mlp = nn.Sequential(*mlp)
        layers: list[nn.Module] = [nn.Unflatten(1, (channels[-1], fh, fw))]
        # Upsample to each encoder stage's exact input size, so any H x W (odd too) round-trips.
        targets = [(h, w)] + [(sh, sw) for _, sh, sw in sizes[:-1]]
        outs = [c] + channels[:-1]
        for i in reversed(range(len(channels))):
            layers.append(nn.Upsample(size=targets[i], mode="nearest"))
            layers.append(nn.Conv2d(channels[i], outs[i] if i else channels[0], 3, 1, 1))
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(channels[0], c, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        if self.prior is not None and onehot is not None:
            z = self.prior(z, onehot)  # N(0, I) -> p(z|y)
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        return self.body(self.mlp(z))


class VAE(nn.Module):
    """A VAE, or a CVAE when `cfg.model == "cvae"` (the label feeds encoder and decoder)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.likelihood == "gaussian":
            init = torch.log(torch.tensor(cfg.gaussian_std))
            learned = cfg.gaussian_variance == "learned"
            self.log_sigma = nn.Parameter(init, requires_grad=learned)
        # One-hot as a lookup table (the exporter turns it into a plain Gather); not a weight.
        num = cfg.num_classes if cfg.conditional else 0
        self.register_buffer("eye", torch.eye(max(num, 1)), persistent=False)
        self.label_head = LabelClassifier(cfg) if cfg.label_head else None
        # M2's q(y|x) (trainer/semisupervised.py): the judge's conv net, a strong MNIST classifier.
        self.classifier = (
            JudgeNet(JudgeSpec(cfg.image_shape, cfg.num_classes)) if cfg.classifier else None
        )

    @torch.no_grad()
    def init_output_bias(self, mean_image: torch.Tensor) -> None:
        """Start the decoder's output at `mean_image` [C, H, W] in [0, 1]: its logit becomes the
        last layer's bias (per pixel; per channel for conv), as Burda et al.'s IWAE code does, so
        the first steps learn strokes, not the background (0.4-0.6 nats on MNIST at 10 epochs)."""
        mlp = self.cfg.arch == "mlp"
        p = (mean_image.flatten() if mlp else mean_image.flatten(1).mean(1)).clamp(1e-3, 1 - 1e-3)
        last = self.decoder.mlp[-1] if mlp else self.decoder.body[-1]
        last.bias.copy_(torch.log(p) - torch.log1p(-p))

    def onehot(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if not self.cfg.conditional:
            return None
        if y is None:
            raise ValueError("a CVAE needs labels y")
        return self.eye[y]

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, self.onehot(y))

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, self.onehot(y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's mean image in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z, y))

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per sample, nats. Broadcasts over leading sample dims of `logits`."""
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_log_prob(x.expand_as(logits), logits)
        return gaussian_log_prob(x.expand_as(logits), torch.sigmoid(logits), self.log_sigma)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, so gradients flow through mu and sigma."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def score_samples(
        self, target: torch.Tensor, y: torch.Tensor | None, z: torch.Tensor
    ) -> ImportanceSamples:
        """Decode z [K, B, D] in one batch and score `target` [B, C, H, W] under each draw."""
        k, b = z.shape[:2]
        logits = self.decode_logits(z.flatten(0, 1), None if y is None else y.repeat(k))
        # Draw i of image j sits at row i * B + j, so the labels and targets repeat whole.
        flat_target = target.unsqueeze(0).expand(k, *target.shape).flatten(0, 1)
        log_px = self.log_likelihood(flat_target, logits).unflatten(0, (k, b))
        return ImportanceSamples(
            z=z,
            log_px=log_px,
            log_pz=standard_normal_log_prob(z),
            logits=logits.unflatten(0, (k, b)),
        )

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        samples: int = 1,
        grey: torch.Tensor | None = None,
        prior: bool = False,
    ) -> VAEOutput:
        """`target` is the image the likelihood scores (the clean one when `x` is corrupted);
        training draws `samples` z per image and `reconstruction` averages over them. `grey`,
        the image before binarization, is what the label head learns from when given; `prior`
        also decodes prior draws (training only)."""
        mu, logvar = self.encode(x, y)
        z = mu.expand(samples if self.training else 1, *mu.shape)
        if self.training:
            z = self.reparameterize(z, logvar)
        drawn = self.score_samples(x if target is None else target, y, z)
        z, logits = drawn.z[0], drawn.logits[0]
        reconstruction = -drawn.log_px.mean(0)
        kl_per_dim = gaussian_kl(mu, logvar)
        kl = kl_per_dim.sum(1)
        prior_logits = self._prior_logits(mu, y, prior)
        real = next(t for t in (grey, target, x) if t is not None)
        return VAEOutput(
            reconstruction=reconstruction,
            kl=kl,
            kl_per_dim=kl_per_dim,
            elbo=-(reconstruction + kl),
            mu=mu,
            logvar=logvar,
            z=z,
            logits=logits,
            samples=drawn,
            label_loss=self._label_loss(real, y, prior_logits),
            prior_logits=prior_logits,
        )

    def _prior_logits(
        self, mu: torch.Tensor, y: torch.Tensor | None, wanted: bool
    ) -> torch.Tensor | None:
        """Decode u ~ N(0, I) with the batch's labels, when a training forward needs fakes."""
        needed = wanted or (self.label_head is not None and y is not None)
        if not (needed and self.training and torch.is_grad_enabled()):
            return None
        return self.decode_logits(torch.randn_like(mu), y)

    def _label_loss(
        self, x: torch.Tensor, y: torch.Tensor | None, prior_logits: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Train the label head on x, and the decoder on its prior samples (training only)."""
        if self.label_head is None or y is None or prior_logits is None:
            return None
        return self.label_head.loss(x, torch.sigmoid(prior_logits), y)

    def sample_forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> VAEOutput:
        """forward() with a sampled z even in eval mode (the ELBO's Monte Carlo estimate)."""
        was_training = self.training
        self.train(True)
        try:
            return self.forward(x, y)
        finally:
            self.train(was_training)


def training_loss(out: VAEOutput, loss_cfg: LossConfig, epoch_progress: float) -> torch.Tensor:
    """Mean over the batch of reconstruction + w(t) * KL, with free bits per latent dimension.

    Free bits (Kingma et al. 2016): each dimension's batch-mean KL counts at least `free_bits`
    nats, so the optimiser gains nothing by collapsing it below that.
    """
    weight = loss_cfg.kl_weight(epoch_progress)
    if loss_cfg.free_bits > 0:
        kl_term = out.kl_per_dim.mean(0).clamp(min=loss_cfg.free_bits).sum()
    else:
        kl_term = out.kl.mean()
    return out.reconstruction.mean() + weight * kl_term


def label_loss(out: VAEOutput, loss_cfg: LossConfig) -> torch.Tensor | float:
    """The label head's weighted batch-mean loss, added to any objective's (0 without a head)."""
    return 0.0 if out.label_loss is None else loss_cfg.label_weight * out.label_loss.mean()


def build_model(cfg: ModelConfig) -> VAE:
    return VAE(cfg)
