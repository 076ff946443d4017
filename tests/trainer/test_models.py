"""Model maths: shapes for any image size, the ELBO's named terms, KL, free bits, warm-up."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import LossConfig, ModelConfig
from trainer.likelihood import gaussian_kl
from trainer.models import build_model, training_loss
from vaegen.errors import VaegenError


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 12), (1, 28, 28), (3, 13, 17), (1, 3, 5)])
def test_any_image_size_round_trips(arch: str, shape: tuple[int, int, int]) -> None:
    cfg = ModelConfig(model="cvae", arch=arch, image_shape=shape, hidden_dims=(32,))
    model = build_model(cfg)
    x = torch.rand(4, *shape)
    out = model(x, torch.tensor([0, 1, 2, 9]))
    assert out.logits.shape == x.shape
    assert model.decode(out.z, torch.zeros(4, dtype=torch.long)).shape == x.shape


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_forward_returns_consistent_named_terms(likelihood: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", likelihood=likelihood, hidden_dims=(32,)))
    x = torch.rand(6, 1, 8, 8)
    out = model(x)
    for term in (out.reconstruction, out.kl, out.elbo):
        assert term.shape == (6,)
    torch.testing.assert_close(out.elbo, -(out.reconstruction + out.kl))
    torch.testing.assert_close(out.kl, out.kl_per_dim.sum(1))
    assert (out.kl >= 0).all()


def test_bernoulli_reconstruction_is_bce() -> None:
    model = build_model(ModelConfig(model="vae", hidden_dims=(16,)))
    model.eval()
    x = torch.rand(3, 1, 8, 8)
    out = model(x)
    bce = torch.nn.functional.binary_cross_entropy(
        torch.sigmoid(out.logits), x, reduction="none"
    ).sum((1, 2, 3))
    torch.testing.assert_close(out.reconstruction, bce, rtol=1e-4, atol=1e-4)


def test_gaussian_reconstruction_matches_normal_log_prob() -> None:
    cfg = ModelConfig(
        model="vae", likelihood="gaussian", gaussian_variance="fixed", hidden_dims=(8,)
    )
    model = build_model(cfg).eval()
    x = torch.rand(2, 1, 8, 8)
    out = model(x)
    ref = torch.distributions.Normal(torch.sigmoid(out.logits), 0.1).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(-out.reconstruction, ref, rtol=1e-4, atol=1e-3)


def test_closed_form_kl_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 4), torch.randn(1, 4) * 0.3
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean()
    assert math.isclose(float(gaussian_kl(mu, logvar).sum()), float(mc), abs_tol=0.02)


def test_reparameterization_passes_gradients_to_encoder() -> None:
    model = build_model(ModelConfig(model="vae", hidden_dims=(16,))).train()
    out = model(torch.rand(5, 1, 8, 8))
    out.elbo.sum().backward()
    assert model.encoder.head.weight.grad is not None
    assert model.encoder.head.weight.grad.abs().sum() > 0


def test_cvae_label_changes_the_decoded_image() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="cvae", hidden_dims=(16,))).eval()
    z = torch.randn(1, 16)
    assert not torch.allclose(
        model.decode(z, torch.tensor([0])), model.decode(z, torch.tensor([1]))
    )


def test_free_bits_floor_each_dimension() -> None:
    model = build_model(ModelConfig(model="vae", hidden_dims=(16,)))
    out = model(torch.rand(8, 1, 8, 8))
    loose = training_loss(out, LossConfig(), 1.0)
    floored = training_loss(out, LossConfig(free_bits=5.0), 1.0)
    expected = out.reconstruction.mean() + out.kl_per_dim.mean(0).clamp(min=5.0).sum()
    torch.testing.assert_close(floored, expected)
    assert floored > loose


def test_kl_warmup_is_linear_to_beta() -> None:
    cfg = LossConfig(beta=2.0, kl_warmup_epochs=4)
    assert [cfg.kl_weight(t) for t in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert LossConfig(beta=0.5).kl_weight(0) == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 0},
        {"model": "gan"},
        {"arch": "transformer"},
        {"likelihood": "poisson"},
        {"model": "cvae", "num_classes": 1},
    ],
)
def test_bad_model_config_raises(kwargs: dict) -> None:
    with pytest.raises(VaegenError):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"beta": -1.0}, {"free_bits": -0.1}, {"kl_warmup_epochs": -1}])
def test_bad_loss_config_raises(kwargs: dict) -> None:
    with pytest.raises(VaegenError):
        LossConfig(**kwargs)
