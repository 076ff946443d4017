"""`vaegen train`: a thin layer over trainer.run.train."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import RAY_ADDRESS_OPTION, handle_errors, single_command_app
from vaegen.errors import VaegenError

app = single_command_app("Train a VAE or CVAE on Ray Train.")


def _dims(text: str, option: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VaegenError(f"{option} takes comma-separated integers, e.g. 512,256") from None
    if not dims:
        raise VaegenError(f"{option} needs at least one size")
    return dims


@app.command()
@handle_errors
def train(
    dataset: str = typer.Option("digits", help="digits, mnist, fashion-mnist or imagefolder:PATH."),
    data_dir: Path | None = typer.Option(None, help="Folder holding the dataset's IDX files."),
    image_size: int | None = typer.Option(None, help="Resize images to SIZE x SIZE."),
    model: str = typer.Option("cvae", help="vae or cvae (label fed to encoder and decoder)."),
    arch: str = typer.Option("mlp", help="mlp or conv."),
    latent_dim: int = typer.Option(16, help="Size of z."),
    hidden_dims: str = typer.Option("512,256", help="MLP hidden sizes, encoder order."),
    conv_channels: str = typer.Option("32,64", help="Conv channels per stage (conv arch)."),
    likelihood: str = typer.Option("bernoulli", help="bernoulli (BCE) or gaussian (MSE)."),
    gaussian_variance: str = typer.Option("learned", help="fixed or learned (gaussian only)."),
    gaussian_std: float = typer.Option(0.1, help="Fixed (or initial) decoder std."),
    binarize: bool = typer.Option(False, help="Dynamic binarization (bernoulli only)."),
    beta: float = typer.Option(1.0, help="KL weight."),
    kl_warmup_epochs: int = typer.Option(0, help="Linear KL warm-up from 0 to beta."),
    free_bits: float = typer.Option(0.0, help="Free bits, nats per latent dimension."),
    epochs: int = typer.Option(10, help="Training epochs."),
    batch_size: int = typer.Option(128, help="Global batch size (split across workers)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    workers: int = typer.Option(2, help="Ray Train workers (DDP)."),
    gpu: bool = typer.Option(False, help="One GPU per worker."),
    seed: int = typer.Option(0, help="Random seed."),
    max_failures: int = typer.Option(3, help="Worker failures survived, from checkpoints."),
    out: Path = typer.Option(..., help="Run directory (RUN)."),
    resume: bool = typer.Option(False, help="Continue from RUN's latest checkpoint."),
    ray_address: str | None = RAY_ADDRESS_OPTION,
) -> None:
    """Train a VAE or CVAE on Ray Train; writes RUN/model, RUN/checkpoints, RUN/train_log.jsonl."""
    from trainer.config import LossConfig, ModelConfig, TrainConfig
    from trainer.datasets import load_dataset
    from trainer.run import train as run_train

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
    result = run_train(model_cfg, train_cfg, out, resume=resume, ray_address=ray_address)
    m = result.metrics
    print(
        f"model: {result.model_dir}  (test ELBO {m.get('test_elbo', float('nan')):.3f} nats, "
        f"epochs {m.get('epoch', -1) + 1})"
    )
