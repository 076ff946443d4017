"""Flat training options (CLI flags, pipeline TOML keys) -> the frozen configs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.config import LossConfig, ModelConfig, TrainConfig
from vaegen.errors import VaegenError


def _dims(value: str | Sequence[int], option: str) -> tuple[int, ...]:
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        dims = tuple(int(v) for v in items if str(v).strip())
    except (ValueError, TypeError):
        raise VaegenError(f"{option} takes comma-separated integers, e.g. 512,256") from None
    if not dims:
        raise VaegenError(f"{option} needs at least one size")
    return dims


def build_configs(
    *,
    dataset: str = "digits",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    model: str = "cvae",
    arch: str = "mlp",
    latent_dim: int = 16,
    hidden_dims: str | Sequence[int] = (512, 256),
    conv_channels: str | Sequence[int] = (32, 64),
    likelihood: str = "bernoulli",
    gaussian_variance: str = "learned",
    gaussian_std: float = 0.1,
    binarize: bool = False,
    beta: float = 1.0,
    kl_warmup_epochs: int = 0,
    free_bits: float = 0.0,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    workers: int = 2,
    gpu: bool = False,
    seed: int = 0,
    max_failures: int = 3,
) -> tuple[ModelConfig, TrainConfig]:
    """Validate every option (raising VaegenError) and read the dataset's shape and classes."""
    from trainer.datasets import load_dataset

    loss = LossConfig(beta=beta, kl_warmup_epochs=kl_warmup_epochs, free_bits=free_bits)
    train_cfg = TrainConfig(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        image_size=image_size,
        binarize=binarize,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        workers=workers,
        gpu=gpu,
        seed=seed,
        max_failures=max_failures,
        loss=loss,
    )
    if latent_dim < 1:
        raise VaegenError(f"--latent-dim must be >= 1; got {latent_dim}")
    probe = load_dataset(dataset, "test", data_dir=data_dir, image_size=image_size)
    model_cfg = ModelConfig(
        model=model,
        arch=arch,
        image_shape=probe.image_shape,
        num_classes=probe.num_classes,
        latent_dim=latent_dim,
        hidden_dims=_dims(hidden_dims, "--hidden-dims"),
        conv_channels=_dims(conv_channels, "--conv-channels"),
        likelihood=likelihood,
        gaussian_variance=gaussian_variance,
        gaussian_std=gaussian_std,
    )
    if model_cfg.likelihood == "gaussian" and train_cfg.binarize:
        raise VaegenError("--binarize goes with the bernoulli likelihood only")
    return model_cfg, train_cfg
