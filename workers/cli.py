"""`vaegen generate`: a thin Typer layer over workers.spec.build_spec and workers.job."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import RAY_ADDRESS_OPTION, handle_errors, single_command_app
from workers.spec import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, GPU_BATCH_SIZE

app = single_command_app("Bulk-generate a labeled synthetic dataset from a decoder.onnx on Ray.")


@app.command()
@handle_errors
def generate(
    model: Path = typer.Argument(..., help="decoder.onnx written by `vaegen export`."),
    num_samples: int = typer.Option(..., "--num-samples", "-n", help="Samples in all."),
    class_counts: str | None = typer.Option(
        None, "--class-counts", help="Exact count per class, e.g. 0=100,3=50 (index or name)."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Split --num-samples evenly over these classes, e.g. 0,3."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every latent and label draw."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help=f"Rows per decoder call [default: {DEFAULT_BATCH_SIZE} on CPU, {GPU_BATCH_SIZE} "
        "with --gpus-per-worker].",
        show_default=False,
    ),
    shard_size: int = typer.Option(
        DEFAULT_SHARD_SIZE, "--shard-size", help="Rows per output shard."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Actors in the pool (default: sized to the Ray cluster)."
    ),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", help="GPUs per actor; > 0 runs onnxruntime's CUDA provider."
    ),
    fmt: str = typer.Option("parquet", "--format", help="parquet, imagefolder or npz."),
    encoding: str | None = typer.Option(
        None, "--encoding", help="raw (uint8 tensor) or png; default raw (png for imagefolder)."
    ),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Serve Prometheus metrics on this port while running."
    ),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="Metrics bind address."),
    metrics_linger: float = typer.Option(
        0.0, "--metrics-linger", help="Keep serving metrics this many seconds after the end."
    ),
    pushgateway: str | None = typer.Option(
        None, "--pushgateway", help="Push the final totals to this Pushgateway (host:port or URL)."
    ),
    worker_wait: float | None = typer.Option(
        None,
        "--worker-wait",
        help="Seconds to wait with no worker up (a lost node, an autoscaler adding one) "
        "before failing; finished shards are kept for --resume. Default 600.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted job in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset."),
    ray_address: str | None = RAY_ADDRESS_OPTION,
) -> None:
    """Generate a labeled dataset from a decoder.onnx on a pool of Ray actors."""
    from workers.job import WORKER_WAIT_S, run_generation
    from workers.spec import build_spec, default_batch_size

    spec = build_spec(
        str(model),
        num_samples,
        class_counts=class_counts,
        classes=classes,
        seed=seed,
        shard_size=shard_size,
        batch_size=batch_size or default_batch_size(gpus_per_worker),
        format=fmt,
        encoding=encoding,
    )
    manifest = run_generation(
        spec,
        out,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        resume=resume,
        overwrite=overwrite,
        ray_address=ray_address,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        pushgateway=pushgateway,
        metrics_linger=metrics_linger,
        worker_wait=WORKER_WAIT_S if worker_wait is None else worker_wait,
    )
    ex = manifest["execution"]
    rate = ex["generated_samples"] / max(ex["seconds"], 1e-9)
    print(
        f"wrote {manifest['num_rows']} samples in {manifest['num_shards']} shards to {out} "
        f"({ex['generated_samples']} generated, {rate:,.0f} samples/s)"
    )
