"""Tiny checkpoints built directly (no training): random weights, saved with trainer.checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import save_model
from trainer.config import ModelConfig
from trainer.models import build_model

MakeRun = Callable[..., Path]


def make_run(
    run_dir: Path,
    model: str = "cvae",
    arch: str = "mlp",
    likelihood: str = "bernoulli",
    image_shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 4,
    latent_dim: int = 5,
    logit_std: float | None = 4.0,
    seed: int = 0,
    hidden_dims: tuple[int, ...] = (64, 32),
    conv_channels: tuple[int, ...] = (8, 16),
) -> Path:
    """Write RUN/model for a small random model. The last layer is rescaled so the logits have
    std `logit_std`, like a trained model's (random init keeps every mean near 0.5, which would
    make parity too easy and the images flat)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        model=model,
        arch=arch,
        image_shape=image_shape,
        num_classes=num_classes,
        latent_dim=latent_dim,
        hidden_dims=hidden_dims,
        conv_channels=conv_channels,
        likelihood=likelihood,
    )
    net = build_model(cfg)
    if logit_std is not None:
        with torch.no_grad():
            layers = (torch.nn.Linear, torch.nn.Conv2d)
            last = [m for m in net.decoder.modules() if isinstance(m, layers)][-1]
            z = torch.randn(256, latent_dim)
            y = torch.arange(256) % num_classes
            scale = logit_std / float(net.eval().decode_logits(z, y).std())
            last.weight.mul_(scale)
            last.bias.mul_(scale)
    save_model(
        run_dir / "model",
        net,
        dataset={
            "name": "tiny",
            "image_shape": list(image_shape),
            "class_names": [f"class-{i}" for i in range(num_classes)],
        },
        train={},
        metrics={},
    )
    return run_dir


@pytest.fixture
def run_factory(tmp_path: Path) -> MakeRun:
    counter = iter(range(1000))

    def factory(**kwargs: object) -> Path:
        return make_run(tmp_path / f"run{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture(scope="module")
def cvae_conv_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One exported CVAE conv decoder (odd image shape) shared by the read-only tests."""
    from exporter.export import export_decoder

    run = make_run(
        tmp_path_factory.mktemp("shared") / "run",
        arch="conv",
        image_shape=(1, 7, 9),
        num_classes=5,
    )
    return run, export_decoder(run)
