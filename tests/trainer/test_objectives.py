"""IWAE and DReG objectives: one bound with eval, K = 1 is the ELBO, DReG's gradient is unbiased
with less variance, and the loss options that go with them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch.distributions import Normal

from eval.likelihood import iwae_log_likelihood
from trainer.config import LossConfig, ModelConfig, TrainConfig
from trainer.datasets import load_dataset
from trainer.models import VAE, VAEOutput, build_model
from trainer.objectives import iwae_bound, log_weights, objective_loss
from vaegen.errors import VaegenError


def _digits(n: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("digits", split)
    return torch.from_numpy(data.images[:n]).float() / 255.0, torch.from_numpy(data.labels[:n])


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: on a busy 2-core machine, threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> VAE:
    """A 2-latent VAE trained briefly on digits, so its posterior is neither prior nor point."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", latent_dim=2, hidden_dims=(16,))).train()
    x, _ = _digits(512, "train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):
        batch = x[(step * 64) % 512 :][:64]
        loss = objective_loss(model(batch), LossConfig(), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_training_bound_equals_eval_iwae_for_the_same_draws() -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(model="cvae", latent_dim=4, hidden_dims=(32,))).train()
    x, y = _digits(6)
    k = 16
    torch.manual_seed(7)  # forward draws eps from the global RNG, eval from its generator
    out = model(x, y, samples=k)
    trained = iwae_bound(out)
    evaluated = iwae_log_likelihood(
        model, x, y, k, torch.Generator().manual_seed(7), max_decodes=k * len(x)
    )
    torch.testing.assert_close(trained.double(), evaluated, rtol=0, atol=1e-4)
    loss = objective_loss(out, LossConfig(objective="iwae", iw_samples=k), 1.0)
    torch.testing.assert_close(loss.double(), -evaluated.mean(), rtol=0, atol=1e-4)
    # The draws feed the ELBO terms too: reconstruction is their mean, z and logits the first.
    torch.testing.assert_close(out.reconstruction, -out.samples.log_px.mean(0))
    torch.testing.assert_close(out.z, out.samples.z[0])


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(beta=0.5, kl_warmup_epochs=4),  # weight 0.25 at epoch 2
        LossConfig(beta=2.0, free_bits=1.0),  # some units under the floor, some over
    ],
    ids=["plain", "beta-warmup", "free-bits"],
)
def test_iwae_with_one_sample_is_the_elbo_loss_in_expectation(tiny: VAE, cfg: LossConfig) -> None:
    x = _digits(32)[0].repeat(8, 1, 1, 1)  # 8 independent draws per image in each pass
    iwae_cfg = LossConfig(**{**cfg.__dict__, "objective": "iwae", "iw_samples": 1})
    diffs = []
    with torch.no_grad():
        for seed in range(100):
            torch.manual_seed(seed)
            out = tiny(x)
            # One draw: the bound is log p(x|z) + log p(z) - log q(z|x) at that very z.
            z = out.samples.z[0]
            log_q = Normal(out.mu, torch.exp(0.5 * out.logvar)).log_prob(z).sum(-1)
            log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
            ref = out.samples.log_px[0] + log_p - log_q
            torch.testing.assert_close(iwae_bound(out), ref, rtol=0, atol=1e-4)
            # Same draw, two losses: they differ by the KL's Monte Carlo noise, zero on average.
            diffs.append(float(objective_loss(out, iwae_cfg, 2.0) - objective_loss(out, cfg, 2.0)))
    d = torch.tensor(diffs, dtype=torch.float64)
    se = float(d.std() / math.sqrt(len(d)))
    assert se > 0  # the Monte Carlo KL really varies, so the check below has teeth
    assert abs(float(d.mean())) < 4 * se, (float(d.mean()), se)


def test_the_elbo_over_k_draws_is_the_same_loss_with_less_noise(tiny: VAE) -> None:
    """--iw-samples K with the ELBO averages K draws: the same expectation, ~1/K the variance
    (what lifts the 10-epoch Pythae recipe 0.7 nats at K = 4, configs/mnist-pythae.toml)."""
    x = _digits(32)[0]
    losses: dict[int, list[float]] = {1: [], 8: []}
    with torch.no_grad():
        for k, values in losses.items():
            for seed in range(200):
                torch.manual_seed(seed)
                values.append(
                    float(objective_loss(tiny(x, samples=k), LossConfig(iw_samples=k), 1.0))
                )
    one, eight = (torch.tensor(losses[k], dtype=torch.float64) for k in (1, 8))
    se = math.sqrt(float(one.var() + eight.var()) / 200)
    assert abs(float(one.mean() - eight.mean())) < 4 * se, (float(one.mean()), float(eight.mean()))
    assert float(eight.var()) < float(one.var()) / 4, (float(one.var()), float(eight.var()))


def _encoder_grads(model: VAE, loss: Callable[[VAEOutput], torch.Tensor], k: int) -> torch.Tensor:
    """One encoder gradient per seed, [seeds, params]; seed n gives every estimator the same z.

    Each pass holds 4 images 10 times over: its gradient is the mean of 10 independent draws'
    (i.i.d. across seeds, with a tenth of one draw's variance), for a tenth of the passes.
    """
    x = _digits(4)[0].repeat(10, 1, 1, 1)
    params = list(model.encoder.parameters())
    grads = []
    for seed in range(100):
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=False)
        loss(model(x, samples=k)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    return torch.stack(grads).double()


def _iwae_loss(objective: str, k: int, beta: float = 1.0) -> Callable[[VAEOutput], torch.Tensor]:
    cfg = LossConfig(objective=objective, iw_samples=k, beta=beta)
    return lambda out: objective_loss(out, cfg, 1.0)


def _stl_loss(out: VAEOutput) -> torch.Tensor:
    """'Sticking the landing' for IWAE: w~ not w~^2 on the path term, biased for K > 1."""
    log_w = log_weights(out.samples, out.mu, out.logvar, stop_q=True)
    return -(torch.softmax(log_w.detach(), 0) * log_w).sum(0).mean()


def _max_paired_t(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |mean(a - b)| / its standard error over the coordinates that vary."""
    diff = a - b
    se = diff.std(0) / math.sqrt(len(diff))
    varies = se > 1e-12
    return float((diff.mean(0)[varies] / se[varies]).abs().max())


# With ~1100 coordinates, 100 paired passes and unbiased estimators each ratio is Student-t with
# 99 degrees of freedom: P(any |t| > 5) < 1100 * 3e-6 < 0.5%. A biased estimator (STL below)
# lands far above it.
T_BOUND = 5.0


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_dreg_encoder_gradient_matches_iwae_with_lower_variance(tiny: VAE, beta: float) -> None:
    k = 16
    iwae = _encoder_grads(tiny, _iwae_loss("iwae", k, beta), k)
    dreg = _encoder_grads(tiny, _iwae_loss("iwae-dreg", k, beta), k)
    assert _max_paired_t(dreg, iwae) < T_BOUND
    # Measured: IWAE's total variance is ~50x (beta 0.5) to ~7700x (beta 1) DReG's here.
    assert float(dreg.var(0).sum()) < 0.1 * float(iwae.var(0).sum())


def test_the_gradient_check_catches_a_biased_estimator(tiny: VAE) -> None:
    k = 16
    iwae = _encoder_grads(tiny, _iwae_loss("iwae", k), k)
    stl = _encoder_grads(tiny, _stl_loss, k)
    assert _max_paired_t(stl, iwae) > 2 * T_BOUND


def test_dreg_leaves_the_decoder_gradient_as_iwae(tiny: VAE) -> None:
    x, _ = _digits(8)
    grads = {}
    for objective in ("iwae", "iwae-dreg"):
        torch.manual_seed(3)
        tiny.zero_grad(set_to_none=True)
        objective_loss(
            tiny(x, samples=8), LossConfig(objective=objective, iw_samples=8), 1.0
        ).backward()
        grads[objective] = [p.grad.clone() for p in tiny.decoder.parameters()]
    for a, b in zip(grads["iwae"], grads["iwae-dreg"], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "vimco"}, "--objective must be one of elbo, iwae, iwae-dreg"),
        ({"objective": "iwae", "iw_samples": 0}, "--iw-samples must be >= 1"),
        ({"corrupt": "mask:1.5"}, "--corrupt takes"),
    ],
)
def test_loss_options_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(VaegenError, match=message):
        LossConfig(**kwargs)


def test_a_config_from_before_the_objectives_still_loads() -> None:
    old = TrainConfig().to_dict()
    old["loss"] = {"beta": 2.0, "kl_warmup_epochs": 3, "free_bits": 0.5}
    cfg = TrainConfig.from_dict(old)
    assert (cfg.loss.objective, cfg.loss.iw_samples, cfg.loss.corrupt) == ("elbo", 1, None)
    new = LossConfig(objective="iwae-dreg", iw_samples=5, corrupt="gaussian:0.2")
    assert TrainConfig.from_dict(TrainConfig(loss=new).to_dict()).loss == new
