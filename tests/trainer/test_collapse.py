"""Posterior-collapse guard: active units, KL per unit, the warning, train_log.jsonl under Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.collapse import (
    LatentUsage,
    active_units,
    collapse_warning,
    latent_metrics,
    latent_usage,
)
from trainer.config import LossConfig, ModelConfig, TrainConfig
from trainer.likelihood import gaussian_kl
from trainer.models import build_model


def test_a_unit_is_active_when_its_mean_varies_over_x() -> None:
    gen = torch.Generator().manual_seed(0)
    # Per-unit standard deviations of E_q[z|x] over 4000 images: variances 1, 0.02, 0.005, 0.
    mu = torch.randn(4000, 4, generator=gen) * torch.tensor([1.0, 0.02**0.5, 0.005**0.5, 0.0])
    assert active_units(mu) == 2
    assert active_units(mu, threshold=0.001) == 3
    assert active_units(mu[:1]) == 0  # one image has no covariance


def test_kl_per_unit_is_the_mean_closed_form_kl_whatever_the_batching() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="cvae", latent_dim=3, hidden_dims=(16,))).eval()
    x, y = torch.rand(1100, 1, 8, 8), torch.randint(0, 10, (1100,))  # 3 encode batches
    usage = latent_usage(model, x, y)
    with torch.no_grad():
        mu, logvar = model.encode(x, y)
    expected = gaussian_kl(mu, logvar).double().mean(0)
    torch.testing.assert_close(torch.tensor(usage.kl_per_unit, dtype=torch.float64), expected)
    assert usage.active_units == active_units(mu)
    assert usage.kl == pytest.approx(float(expected.sum()))


@pytest.mark.parametrize(
    ("usage", "collapsed"),
    [
        (LatentUsage(3, (2.0, 1.5, 0.8, 0.001)), False),
        (LatentUsage(1, (0.3, 0.001, 0.001, 0.001)), True),  # under the KL threshold
        (LatentUsage(0, (5.0, 0.1, 0.1, 0.1)), True),  # KL spent on noise: no unit carries x
    ],
)
def test_collapse_is_low_kl_or_no_active_unit(usage: LatentUsage, collapsed: bool) -> None:
    warning = collapse_warning(usage)
    assert (warning is not None) == collapsed
    if warning is not None:
        assert "\n" not in warning
        assert f"{usage.active_units} of 4 latent units active" in warning
        assert "--free-bits" in warning and "--kl-warmup-epochs" in warning
        assert "--beta" not in warning


def test_the_warning_names_beta_when_it_is_above_one() -> None:
    warning = collapse_warning(LatentUsage(0, (0.01, 0.01)), beta=20.0)
    assert warning is not None and "lower --beta (20)" in warning


def test_latent_metrics_are_json_and_leave_the_mode_alone() -> None:
    model = build_model(ModelConfig(model="cvae", latent_dim=4, hidden_dims=(16,))).train()
    images = np.random.default_rng(0).random((3000, 1, 8, 8), dtype=np.float32)
    metrics = latent_metrics(model, images, np.zeros(3000, dtype=np.int64), beta=2.0)
    assert model.training
    assert set(metrics) == {"active_units", "kl_per_unit", "collapse_warning"}
    assert len(metrics["kl_per_unit"]) == 4
    assert json.loads(json.dumps(metrics)) == metrics


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_ray_runs_log_the_guard_and_a_collapsing_run_warns(tmp_path: Path) -> None:
    from trainer.run import train

    model_cfg = ModelConfig(model="cvae", hidden_dims=(128, 64), latent_dim=8)
    # IWAE-DReG on corrupted inputs, free bits against collapse: the new options train on Ray.
    healthy = LossConfig(objective="iwae-dreg", iw_samples=4, corrupt="mask:0.25", free_bits=0.5)
    train(
        model_cfg,
        TrainConfig(epochs=3, batch_size=128, workers=2, loss=healthy),
        tmp_path / "a",
        show_progress=False,
    )
    log = _log(tmp_path / "a")
    assert log[-1]["test_elbo"] > log[0]["test_elbo"]
    assert all(len(e["kl_per_unit"]) == 8 for e in log)
    assert log[-1]["active_units"] >= 2 and log[-1]["collapse_warning"] is None
    # A KL weight of 20 and no free bits: the posterior collapses and the log says so.
    collapsing = LossConfig(beta=20.0)
    train(
        model_cfg,
        TrainConfig(epochs=3, batch_size=128, workers=2, loss=collapsing),
        tmp_path / "b",
        show_progress=False,
    )
    last = _log(tmp_path / "b")[-1]
    assert last["active_units"] == 0
    assert "posterior collapse" in last["collapse_warning"]
    assert "--free-bits" in last["collapse_warning"]
