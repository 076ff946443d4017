"""`vaegen train`: a thin layer over trainer.run.train.

The training flags are the `flag` fields of trainer/config.py: declare a new one there and it
appears here, in the pipeline's [train] keys and in build_configs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from trainer.config import ModelConfig, TrainConfig
from trainer.options import CONFIGS, build_configs
from vaegen.cliutil import (
    METRICS_HOST_OPTION,
    METRICS_PORT_OPTION,
    RAY_ADDRESS_OPTION,
    flag_command,
    handle_errors,
    serve_metrics_if_asked,
    single_command_app,
)

app = single_command_app("Train a VAE or CVAE on Ray Train.")


@app.command()
@handle_errors
@flag_command(*CONFIGS, build=build_configs)
def train(
    configs: tuple[ModelConfig, TrainConfig],
    out: Path = typer.Option(..., help="Run directory (RUN)."),
    resume: bool = typer.Option(False, help="Continue from RUN's latest checkpoint."),
    ray_address: str | None = RAY_ADDRESS_OPTION,
    metrics_port: int | None = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
) -> None:
    """Train a VAE or CVAE on Ray Train; writes RUN/model, RUN/checkpoints, RUN/train_log.jsonl."""
    from trainer.run import train as run_train

    serve_metrics_if_asked(metrics_port, metrics_host)  # vaegen_train_epoch_seconds, _train_loss
    result = run_train(*configs, out, resume=resume, ray_address=ray_address)
    m = result.metrics
    print(
        f"model: {result.model_dir}  (test ELBO {m.get('test_elbo', float('nan')):.3f} nats, "
        f"epochs {m.get('epoch', -1) + 1})"
    )
