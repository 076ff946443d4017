"""`vaegen pipeline --config FILE.toml`: every stage, with every artifact under one directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vaegen.cliutil import (
    METRICS_HOST_OPTION,
    METRICS_PORT_OPTION,
    RAY_ADDRESS_OPTION,
    handle_errors,
    serve_metrics_if_asked,
    single_command_app,
)
from vaegen.dirlock import hold_directory

app = single_command_app("Run train, export, generate and eval from one TOML file.")


def _summary_table(report_dir: Path) -> str:
    """The few numbers people look at first, from REPORT/metrics.json."""
    metrics = json.loads((report_dir / "metrics.json").read_text())
    rows = []
    for section, key, label in (
        ("likelihood", "elbo_nats", "test ELBO (nats)"),
        ("likelihood", "iwae_nll_nats", "IWAE NLL (nats)"),
        ("likelihood", "elbo_bits_per_dim", "ELBO (bits/dim)"),
        ("fid", "fid", "FID (judge)"),
        ("fid", "kid_mean", "KID"),
        ("fid", "precision", "precision"),
        ("fid", "recall", "recall"),
        ("cas", "cas_accuracy", "CAS accuracy"),
        ("cas", "real_accuracy", "real-data accuracy"),
        ("cas", "label_fidelity", "label fidelity"),
    ):
        value = (metrics.get(section) or {}).get(key)
        if isinstance(value, int | float):
            rows.append(f"  {label:<22}{value:>12.4f}")
    return "\n".join(rows)


@app.command()
@handle_errors
def pipeline(
    config: Path = typer.Option(..., help="Pipeline TOML (see configs/)."),
    force: bool = typer.Option(False, help="Rerun every stage, even up-to-date ones."),
    metrics_port: int | None = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
    ray_address: str | None = RAY_ADDRESS_OPTION,
) -> None:
    """Run train -> export -> generate -> eval; skips stages whose output matches the config."""
    from vaegen.pipeline import load_config, run_pipeline

    cfg = load_config(config)
    serve_metrics_if_asked(metrics_port, metrics_host)  # every stage's metrics, one endpoint
    with hold_directory(cfg.out, "vaegen pipeline"):  # its stages lock their own folders too
        run_pipeline(cfg, force=force, ray_address=ray_address)
    print(f"report: {cfg.report_dir / 'report.html'}")
    print(_summary_table(cfg.report_dir))
