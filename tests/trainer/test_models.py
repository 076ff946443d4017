"""Model maths: shapes for any image size, the ELBO's named terms, KL, free bits, warm-up."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from trainer.config import LossConfig, ModelConfig, TrainConfig
from trainer.likelihood import gaussian_kl
from trainer.models import build_model, label_loss, training_loss
from trainer.prior import ClassPrior
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


def test_class_prior_kl_matches_monte_carlo_in_z_space() -> None:
    """KL(q(u) || N(0, I)), what forward computes, is KL(q(z) || p(z|y)) for z = mu_y + s_y u."""
    torch.manual_seed(0)
    prior = ClassPrior(3, 4)
    with torch.no_grad():
        prior.mu.normal_()
        prior.log_sigma.normal_(std=0.5)
    onehot = torch.eye(3)[[2]]
    m, logvar = torch.randn(1, 4), torch.randn(1, 4) * 0.3
    u = m + torch.exp(0.5 * logvar) * torch.randn(200_000, 4)
    z = prior(u, onehot.expand(len(u), 3))
    sigma_y = torch.exp(prior.log_sigma[2]).detach()
    mu_y = prior.mu[2].detach()
    q_z = torch.distributions.Normal(mu_y + sigma_y * m, sigma_y * torch.exp(0.5 * logvar))
    p_z = torch.distributions.Normal(mu_y, sigma_y)
    mc = (q_z.log_prob(z.detach()) - p_z.log_prob(z.detach())).sum(-1).mean()
    assert math.isclose(float(gaussian_kl(m, logvar).sum()), float(mc), abs_tol=0.02)


def test_class_prior_sits_in_the_decoder_and_starts_as_identity() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(model="cvae", hidden_dims=(16,), prior="class")
    model = build_model(cfg).eval()
    u, y = torch.randn(5, 16), torch.tensor([0, 1, 2, 3, 4])
    plain = build_model(dataclasses.replace(cfg, prior="standard")).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(model.decode(u, y), plain.decode(u, y))  # mu_y = 0, sigma_y = 1
    with torch.no_grad():
        model.decoder.prior.mu.normal_()
        model.decoder.prior.log_sigma.normal_(std=0.5)
    z = model.decoder.prior.mu[y] + torch.exp(model.decoder.prior.log_sigma[y]) * u
    torch.testing.assert_close(model.decode(u, y), plain.decode(z, y))


def test_label_head_learns_from_real_images_only() -> None:
    """The decoded images' CE moves the decoder, never the classifier (no collusion)."""
    torch.manual_seed(0)
    cfg = ModelConfig(model="cvae", hidden_dims=(16,), label_head=True)
    model = build_model(cfg).train()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    out = model(x, y)
    assert out.label_loss is not None and out.label_loss.shape == (6,)
    label_loss(out, LossConfig(label_weight=2.0)).backward()
    head_grads = [p.grad.clone() for p in model.label_head.parameters()]
    assert model.decoder.mlp[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    ce_real = torch.nn.functional.cross_entropy(model.label_head(x), y, reduction="none")
    (2.0 * ce_real.mean()).backward()
    for got, want in zip(head_grads, model.label_head.parameters(), strict=True):
        torch.testing.assert_close(got, want.grad)
    with torch.no_grad():
        assert model(x, y).label_loss is None  # evaluation decodes no extra samples
    assert model.eval()(x, y).label_loss is None


def test_configs_without_the_new_fields_still_load() -> None:
    old_model = {"model": "cvae", "latent_dim": 8, "hidden_dims": [32], "image_shape": [1, 8, 8]}
    cfg = ModelConfig.from_dict(old_model)
    assert cfg.prior == "standard" and not cfg.label_head
    old_train = {"epochs": 3, "loss": {"beta": 1.0, "kl_warmup_epochs": 0, "free_bits": 0.0}}
    assert TrainConfig.from_dict(old_train).loss.label_weight == 1.0
    assert ModelConfig.from_dict({**cfg.to_dict(), "prior": "class"}).prior == "class"


@pytest.mark.parametrize("kwargs", [{"prior": "vamp"}, {"model": "vae", "prior": "class"}])
def test_bad_prior_config_raises(kwargs: dict) -> None:
    with pytest.raises(VaegenError):
        ModelConfig(**kwargs)


def test_label_shift_moves_the_heads_real_images_only() -> None:
    """--label-shift: the head's CE on real images sees shifted copies; the config checks it."""
    torch.manual_seed(0)
    cfg = ModelConfig(model="cvae", hidden_dims=(16,), image_shape=(1, 8, 8), label_head=True)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0  # a centred blob: any shift moves its pixels
    shifted = ModelConfig(**{**cfg.to_dict(), "label_shift": 2})
    head = build_model(shifted).label_head
    seen = []
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    head.loss(x, x, torch.zeros(64, dtype=torch.long))
    real, fake = seen
    assert not torch.equal(real, x) and real.sum(dim=(1, 2, 3)).min() > 0
    torch.testing.assert_close(fake, x)  # decoded images are scored where they are
    assert build_model(cfg).label_head.shift == 0
    with pytest.raises(VaegenError, match="label-shift"):
        ModelConfig(model="cvae", label_shift=2)
    with pytest.raises(VaegenError, match="label-shift"):
        ModelConfig(model="cvae", label_head=True, label_shift=-1)


def test_vae_refuses_a_label_head() -> None:
    with pytest.raises(VaegenError, match="cvae"):
        ModelConfig(model="vae", label_head=True)
    with pytest.raises(VaegenError):
        LossConfig(label_weight=-1.0)


def test_exported_decoder_holds_the_class_prior(tmp_path) -> None:
    """decoder.onnx keeps its contract (z ~ N(0, I), y) and maps z to p(z|y) inside the graph."""
    import onnxruntime as ort

    from exporter.export import export_decoder
    from trainer.checkpoint import save_model

    torch.manual_seed(0)
    cfg = ModelConfig(model="cvae", hidden_dims=(16,), latent_dim=3, num_classes=4, prior="class")
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.decoder.prior.mu.normal_(std=2.0)
        model.decoder.prior.log_sigma.normal_(std=0.5)
    names = [str(i) for i in range(4)]
    dataset = {"name": "tiny", "image_shape": [1, 8, 8], "class_names": names}
    save_model(tmp_path / "model", model, dataset=dataset, train={}, metrics={})
    result = export_decoder(tmp_path)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    u, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    (mean,) = session.run(["mean"], {"z": u.numpy(), "y": y.numpy()})
    prior = model.decoder.prior
    z = prior.mu[y] + torch.exp(prior.log_sigma[y]) * u
    with torch.no_grad():
        body = torch.sigmoid(model.decoder.body(model.decoder.mlp(torch.cat([z, model.eye[y]], 1))))
    np.testing.assert_allclose(mean, body.numpy(), atol=1e-5)


@pytest.mark.slow
def test_label_head_and_class_prior_train_under_ray_and_export(local_ray, tmp_path) -> None:
    """Both train under DDP (2 workers; every parameter gets a gradient) and export."""
    from exporter.export import export_decoder
    from trainer.checkpoint import load_model
    from trainer.run import train

    cfg = ModelConfig(model="cvae", hidden_dims=(64,), prior="class", label_head=True)
    train(cfg, TrainConfig(epochs=2, workers=2), tmp_path, show_progress=False)
    model, _ = load_model(tmp_path)
    assert model.decoder.prior.log_sigma.abs().sum() > 0  # the prior moved off N(0, I)
    (report,) = export_decoder(tmp_path).parity
    assert report.passed
