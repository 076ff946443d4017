"""--init-output-bias: the decoder starts at the mean training image (Burda et al.'s IWAE code)."""

from __future__ import annotations

import pytest
import torch

from trainer.config import ModelConfig
from trainer.models import build_model


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_untrained_decoder_outputs_the_mean_image(arch: str) -> None:
    model = build_model(ModelConfig(model="vae", arch=arch, image_shape=(2, 8, 8))).eval()
    mean = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    mean[0, 0, 0], mean[1, 0, 0] = 0.0, 1.0  # never-inked and always-inked pixels stay finite
    model.init_output_bias(mean)
    last = model.decoder.mlp[-1] if arch == "mlp" else model.decoder.body[-1]
    with torch.no_grad():
        last.weight.zero_()  # the output is then the bias alone, whatever z is
        out = model.decode(torch.randn(3, model.cfg.latent_dim))
    if arch == "conv":  # one bias per channel: the channel's mean intensity
        mean = mean.mean((1, 2), keepdim=True).expand_as(mean)
    want = mean.clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(out, want.expand_as(out), atol=1e-6, rtol=1e-5)
