"""Denoising input corruption: the --corrupt parser, the two noise models' statistics, and a
model that encodes the corrupted image while its likelihood scores the clean one."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ModelConfig
from trainer.corruption import Corruption, parse_corruption
from trainer.models import build_model
from vaegen.errors import VaegenError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mask:0.5", Corruption("mask", 0.5)),
        ("gaussian:0.1", Corruption("gaussian", 0.1)),
        (" Mask : 0.25 ", Corruption("mask", 0.25)),
        ("mask:0", Corruption("mask", 0.0)),
        (None, None),
        ("", None),
    ],
)
def test_parse(spec: str | None, expected: Corruption | None) -> None:
    assert parse_corruption(spec) == expected
    if expected is not None:
        assert parse_corruption(expected.spec) == expected


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("mask", "got 'mask'"),
        ("mask:1", "outside \\[0, 1\\)"),
        ("mask:-0.1", "outside \\[0, 1\\)"),
        ("gaussian:0", "is not > 0"),
        ("gaussian:inf", "got inf"),
        ("mask:nan", "got nan"),
        ("mask:lots", "'lots' in 'mask:lots' is not a number"),
        ("salt:0.1", "unknown kind 'salt'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, why: str) -> None:
    with pytest.raises(VaegenError, match=f"^--corrupt takes mask:P .*{why}"):
        parse_corruption(spec)


def test_mask_zeroes_whole_pixels_at_rate_p() -> None:
    x = torch.rand(200, 3, 16, 16) * 0.9 + 0.1  # no pixel is zero before the mask
    before = x.clone()
    out = Corruption("mask", 0.3).apply(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, before)  # the clean batch is left as it is
    zeroed = out == 0
    # All channels of a pixel go together; kept pixels are untouched.
    assert torch.equal(zeroed.all(1), zeroed.any(1))
    torch.testing.assert_close(out[~zeroed], x[~zeroed])
    n = zeroed[:, 0].numel()
    rate = float(zeroed[:, 0].float().mean())
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    again = Corruption("mask", 0.3).apply(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_gaussian_adds_noise_of_std_s_and_clips() -> None:
    x = torch.full((100, 1, 28, 28), 0.5)
    s = 0.05  # ten sigmas from both edges: clipping never bites
    noise = Corruption("gaussian", s).apply(x, torch.Generator().manual_seed(1)) - x
    n = noise.numel()
    assert abs(float(noise.mean())) < 4 * s / math.sqrt(n)
    assert abs(float(noise.std()) - s) < 4 * s / math.sqrt(2 * n)
    wide = Corruption("gaussian", 2.0).apply(x, torch.Generator().manual_seed(1))
    assert float(wide.min()) == 0.0 and float(wide.max()) == 1.0


def test_the_likelihood_scores_the_clean_target() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="vae", hidden_dims=(16,))).eval()
    clean = torch.rand(5, 1, 8, 8)
    noisy = Corruption("mask", 0.5).apply(clean, torch.Generator().manual_seed(0))
    out = model(noisy, target=clean)
    # z = mu of the noisy encoding, scored against the clean image.
    ref = model.log_likelihood(clean, model.decode_logits(model.encode(noisy)[0]))
    torch.testing.assert_close(out.reconstruction, -ref)
    assert not torch.allclose(out.reconstruction, model(noisy).reconstruction)
