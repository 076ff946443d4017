"""Training objectives: the ELBO, the importance-weighted bound (IWAE) and its DReG gradient.

IWAE (Burda et al. 2016): log (1/K) sum_k w_k with w_k = p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q.
`log_weights` is the one implementation of log w_k: training (below) and eval's IWAE NLL
(eval/likelihood.py) both call it on `VAE.score_samples` draws.

DReG (Tucker et al. 2019): the same bound, but the encoder's gradient is the doubly
reparameterized estimator sum_k w~_k^2 d log w_k / d z_k * d z_k / d phi, with q's parameters
stopped in log q and w~ the normalized weights. Its signal-to-noise ratio does not fall as K grows,
the plain IWAE encoder gradient's does (Rainforth et al. 2018). The decoder's gradient is IWAE's.

Beta, warm-up and free bits under IWAE, defined so that K = 1 gives the ELBO loss in expectation:
- the KL weight w(t) (beta with its warm-up) tempers the prior/posterior ratio inside each weight,
  log w_k = log p(x|z_k) + w(t) (log p(z_k) - log q(z_k|x)); w(t) = 1 is the plain IWAE bound;
- free bits add w(t) * sum_d max(0, free_bits - KL_d), KL_d the batch-mean closed-form KL of
  dimension d: the ELBO's clamp, rec + w sum_d max(free_bits, KL_d), written as a penalty.
"""

from __future__ import annotations

import math

import torch

from trainer.config import LossConfig
from trainer.likelihood import diag_normal_log_prob
from trainer.models import ImportanceSamples, VAEOutput, training_loss


def log_weights(
    drawn: ImportanceSamples,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    kl_weight: float = 1.0,
    stop_q: bool = False,
) -> torch.Tensor:
    """log w_k = log p(x|z_k) + kl_weight * (log p(z_k) - log q(z_k|x)), nats, [K, B].

    `stop_q` detaches q's parameters inside log q (DReG); z_k keeps its path gradient.
    """
    if stop_q:
        mu, logvar = mu.detach(), logvar.detach()
    log_q = diag_normal_log_prob(drawn.z, mu, logvar)
    return drawn.log_px + kl_weight * (drawn.log_pz - log_q)


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def iwae_bound(out: VAEOutput) -> torch.Tensor:
    """The IWAE bound on log p(x[|y]) per image, [B], from forward's K draws."""
    if out.samples is None:
        raise ValueError("the VAE output carries no importance samples")
    return log_mean_exp(log_weights(out.samples, out.mu, out.logvar))


def _dreg_surrogate(z: torch.Tensor, log_w: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """A per-image value whose gradient is DReG's: sum_k sg(w~_k) log w_k, [B].

    Through log p(x|z) the decoder gets sum_k w~_k grad log w_k, IWAE's own gradient. A hook on z
    scales each draw's path gradient by (1 - c + c w~_k), c the KL weight, so the encoder gets
    sum_k w~_k (1 - c + c w~_k) d log w_k/dz_k dz_k/dphi: the score term -c w~_k d log q/dphi,
    rewritten by reparameterization, turns w~_k into w~_k^2 at c = 1 (Tucker et al. eq. 5).
    Everything else that backpropagates through these z is scaled too: call once per forward.
    """
    weights = torch.softmax(log_w.detach(), dim=0)
    if z.requires_grad:
        scale = (1.0 - kl_weight + kl_weight * weights).unsqueeze(-1)
        z.register_hook(lambda grad: grad * scale)
    return (weights * log_w).sum(0)


def objective_loss(out: VAEOutput, loss_cfg: LossConfig, epoch_progress: float) -> torch.Tensor:
    """The batch loss to minimise for `loss_cfg.objective`; `out` from forward(samples=K)."""
    if loss_cfg.objective == "elbo":
        return training_loss(out, loss_cfg, epoch_progress)
    if out.samples is None:
        raise ValueError("the IWAE objectives need forward's importance samples")
    weight = loss_cfg.kl_weight(epoch_progress)
    dreg = loss_cfg.objective == "iwae-dreg"
    log_w = log_weights(out.samples, out.mu, out.logvar, kl_weight=weight, stop_q=dreg)
    bound = _dreg_surrogate(out.samples.z, log_w, weight) if dreg else log_mean_exp(log_w)
    loss = -bound.mean()
    if loss_cfg.free_bits > 0:
        shortfall = (loss_cfg.free_bits - out.kl_per_dim.mean(0)).clamp(min=0).sum()
        loss = loss + weight * shortfall
    return loss
