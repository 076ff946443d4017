"""`vaegen train`: a thin layer over trainer.run.train."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import (
    METRICS_HOST_OPTION,
    METRICS_PORT_OPTION,
    RAY_ADDRESS_OPTION,
    handle_errors,
    single_command_app,
)

app = single_command_app("Train a VAE or CVAE on Ray Train.")


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
    metrics_port: int | None = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
) -> None:
    """Train a VAE or CVAE on Ray Train; writes RUN/model, RUN/checkpoints, RUN/train_log.jsonl."""
    options = dict(locals())
    for key in ("out", "resume", "ray_address", "metrics_port", "metrics_host"):
        options.pop(key)
    from trainer.options import build_configs
    from trainer.run import train as run_train

    model_cfg, train_cfg = build_configs(**options)
    if metrics_port is not None:
        from vaegen.telemetry import serve_metrics

        serve_metrics(metrics_port, metrics_host)  # vaegen_train_epoch_seconds, _train_loss
    result = run_train(model_cfg, train_cfg, out, resume=resume, ray_address=ray_address)
    m = result.metrics
    print(
        f"model: {result.model_dir}  (test ELBO {m.get('test_elbo', float('nan')):.3f} nats, "
        f"epochs {m.get('epoch', -1) + 1})"
    )
