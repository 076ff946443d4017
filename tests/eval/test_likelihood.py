"""ELBO, IWAE and reconstruction errors: bounds, convergence in K, a reference, binarization."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eval import likelihood as lik
from trainer.collapse import active_units
from trainer.inputs import binarize_fixed, evaluation_inputs
from trainer.likelihood import diag_normal_log_prob, standard_normal_log_prob
from vaegen.errors import VaegenError

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scored(cvae_model: Any, digits: tuple[Any, Any]) -> dict[str, Any]:
    _, test = digits
    targets = evaluation_inputs(test.images, binarize=False)
    runs = [
        lik.evaluate_likelihood(cvae_model, targets, test.labels, device=CPU, seed=s)
        for s in range(8)
    ]
    iwae = {
        k: lik.evaluate_iwae(cvae_model, targets, test.labels, k, device=CPU, batch_size=100)
        for k in (1, 8, 64)
    }
    # The ELBO averaged over 8 draws per image: the same bound, with less Monte Carlo noise.
    elbo_avg = np.mean([r.elbo for r in runs], axis=0)
    return {
        "res": runs[0],
        "elbo_avg": elbo_avg,
        "iwae": iwae,
        "targets": targets,
        "labels": test.labels,
    }


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def test_iwae_is_a_tighter_bound_than_the_elbo(scored: dict[str, Any]) -> None:
    log_px = scored["iwae"][64]
    # Both lower-bound log p(x|y): K = 64 must sit above the ELBO by far more than the noise of
    # the (paired, per-image) difference.
    gap = log_px - scored["elbo_avg"]
    assert gap.mean() > 3 * _se(gap), (gap.mean(), _se(gap))


def test_iwae_improves_with_k(scored: dict[str, Any]) -> None:
    nll = {k: -v.mean() for k, v in scored["iwae"].items()}
    noise = {k: 3 * _se(v) for k, v in scored["iwae"].items()}
    assert nll[8] <= nll[1] + noise[1]
    assert nll[64] <= nll[8] + noise[8]
    assert nll[64] < nll[1]
    # K = 1 is an unbiased estimate of the ELBO.
    diff = scored["iwae"][1] - scored["elbo_avg"]
    assert abs(diff.mean()) < 3 * _se(diff)


def test_iwae_matches_a_direct_reference(cvae_model: Any, scored: dict[str, Any]) -> None:
    x = torch.from_numpy(scored["targets"][:5])
    y = torch.from_numpy(scored["labels"][:5])
    k = 16
    got = lik.iwae_log_likelihood(
        cvae_model, x, y, k, torch.Generator().manual_seed(3), max_decodes=10_000
    )
    # Same draws, written out sample by sample.
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        mu, logvar = cvae_model.encode(x, y)
        eps = torch.randn((k, *mu.shape), generator=gen)
        log_w = []
        for i in range(k):
            z = mu + torch.exp(0.5 * logvar) * eps[i]
            log_px = cvae_model.log_likelihood(x, cvae_model.decode_logits(z, y))
            log_w.append(log_px + standard_normal_log_prob(z) - diag_normal_log_prob(z, mu, logvar))
        ref = torch.logsumexp(torch.stack(log_w).double(), 0) - math.log(k)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def test_iwae_chunking_changes_only_the_draws(cvae_model: Any, scored: dict[str, Any]) -> None:
    x = torch.from_numpy(scored["targets"][:20])
    y = torch.from_numpy(scored["labels"][:20])
    whole = lik.iwae_log_likelihood(cvae_model, x, y, 64, torch.Generator().manual_seed(0))
    # 7 decodes per chunk: every image alone, 7 samples at a time, with a ragged tail.
    tiny = lik.iwae_log_likelihood(
        cvae_model, x, y, 64, torch.Generator().manual_seed(0), max_decodes=7
    )
    assert tiny.shape == whole.shape
    assert abs(float(tiny.mean() - whole.mean())) < 0.1
    # Same budget as the batch: one chunk, so the very same draws and values.
    again = lik.iwae_log_likelihood(
        cvae_model, x, y, 64, torch.Generator().manual_seed(0), max_decodes=20 * 64
    )
    torch.testing.assert_close(again, whole)


def test_summary_units(scored: dict[str, Any]) -> None:
    s = lik.summarize(
        scored["res"], scored["iwae"][8], 8, scored["labels"], [str(i) for i in range(10)], 64
    )
    assert s["elbo_bits_per_dim"] == pytest.approx(-s["elbo_nats"] / (64 * math.log(2)))
    assert s["iwae_nll_bits_per_dim"] == pytest.approx(s["iwae_nll_nats"] / (64 * math.log(2)))
    assert s["elbo_nats"] == pytest.approx(-(s["reconstruction_nats"] + s["kl_nats"]))
    assert sum(c["count"] for c in s["per_class"].values()) == len(scored["labels"])
    assert 0 < s["mse_per_pixel"] < 0.25
    # The per-class means average back to the overall mean.
    weighted = sum(c["elbo_nats"] * c["count"] for c in s["per_class"].values())
    assert weighted / len(scored["labels"]) == pytest.approx(s["elbo_nats"])


def test_fixed_binarization_is_seeded_and_binary() -> None:
    images = np.random.default_rng(5).integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    a = binarize_fixed(images)
    assert a.dtype == np.float32 and set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, binarize_fixed(images))
    # P(pixel = 1) follows intensity: all-white stays 1, all-black stays 0.
    extremes = np.stack([np.zeros((1, 4, 4), np.uint8), np.full((1, 4, 4), 255, np.uint8)])
    np.testing.assert_array_equal(binarize_fixed(extremes)[:, 0, 0, 0], [0.0, 1.0])


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared/data/mnist not present")
def test_binarized_mnist_test_split_md5() -> None:
    from trainer.datasets import load_dataset

    test = load_dataset("mnist", "test", data_dir=MNIST_DIR)
    x_bin = evaluation_inputs(test.images, binarize=True).reshape(len(test), -1)
    digest = hashlib.md5(x_bin.astype(np.float32).tobytes(), usedforsecurity=False).hexdigest()
    assert digest == "ac54ac6ca87fd738ecb66a4f3edfd607"


def test_summary_reports_active_units_and_kl_per_unit(scored: dict[str, Any]) -> None:
    res = scored["res"]
    s = lik.summarize(res, None, None, scored["labels"], [str(i) for i in range(10)], 64)
    assert s["active_units"] == active_units(torch.from_numpy(res.mu))
    assert 1 <= s["active_units"] <= 8  # a trained model uses some of its 8 units
    assert len(s["kl_per_unit_nats"]) == 8
    # The closed-form KL is the same whatever z was drawn: its units add up to the KL term.
    assert sum(s["kl_per_unit_nats"]) == pytest.approx(s["kl_nats"])


def test_corrupted_reconstruction(cvae_model: Any, scored: dict[str, Any]) -> None:
    targets, labels = scored["targets"], scored["labels"]

    def run(spec: str, batch_size: int = 256, seed: int = 0) -> dict[str, Any]:
        return lik.corrupted_reconstruction(
            cvae_model, targets, labels, spec, device=CPU, batch_size=batch_size, seed=seed
        )

    # Nothing masked: the clean reconstruction errors, from the same z = mu.
    clean = run("mask:0")
    assert clean["mse_per_pixel"] == pytest.approx(float(scored["res"].mse.mean()))
    assert clean["bce_per_pixel"] == pytest.approx(float(scored["res"].bce.mean()))
    masked = run("mask:0.5")
    assert masked["corruption"] == "mask:0.5"
    assert masked["mse_per_pixel"] > clean["mse_per_pixel"]
    assert run("gaussian:0.3")["mse_per_pixel"] > clean["mse_per_pixel"]
    # One draw for the whole set: the batch size changes nothing, the seed changes the draw.
    assert run("mask:0.5", batch_size=37) == pytest.approx(masked)
    assert run("mask:0.5", seed=1)["mse_per_pixel"] != masked["mse_per_pixel"]
    with pytest.raises(VaegenError, match="--corrupt takes"):
        run("mask:2")
