"""`vaegen generate`: a thin Typer layer over workers.spec.build_spec and workers.job."""

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
from vaegen.dataset_format import FORMATS
from vaegen.errors import VaegenError
from workers.judge import DEFAULT_MIN_CONFIDENCE
from workers.judge_filter import DEFAULT_MIN_ACCEPTANCE
from workers.options import WORKER_WAIT_S, GenerateOptions
from workers.spec import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, GPU_BATCH_SIZE

app = single_command_app("Bulk-generate a labeled synthetic dataset from a decoder.onnx on Ray.")

MODEL = typer.Argument(..., help="decoder.onnx written by `vaegen export`.")
NUM_SAMPLES = typer.Option(..., "--num-samples", "-n", help="Samples in all.")
CLASS_COUNTS = typer.Option(
    None, "--class-counts", help="Exact count per class, e.g. 0=100,3=50 (index or name)."
)
CLASSES = typer.Option(
    None, "--classes", help="Split --num-samples evenly over these classes, e.g. 0,3."
)
SEED = typer.Option(0, "--seed", help="Seed of every latent and label draw.")
BATCH_SIZE = typer.Option(
    None,
    "--batch-size",
    help=f"Rows per decoder call [default: {DEFAULT_BATCH_SIZE} on CPU, {GPU_BATCH_SIZE} "
    "with --gpus-per-worker].",
    show_default=False,
)
SHARD_SIZE = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", help="Rows per output shard.")
WORKERS = typer.Option(
    None, "--workers", help="Actors in the pool (default: sized to the Ray cluster)."
)
GPUS_PER_WORKER = typer.Option(
    0.0, "--gpus-per-worker", help="GPUs per actor; > 0 runs onnxruntime's CUDA provider."
)
FORMAT = typer.Option("parquet", "--format", help=f"{', '.join(FORMATS)}.")
ENCODING = typer.Option(
    None, "--encoding", help="raw (uint8 tensor) or png; default raw (png for imagefolder)."
)
OUT = typer.Option(..., "--out", help="Dataset folder to write.")
METRICS_LINGER = typer.Option(
    0.0, "--metrics-linger", help="Keep serving metrics this many seconds after the end."
)
PUSHGATEWAY = typer.Option(
    None, "--pushgateway", help="Push the final totals to this Pushgateway (host:port or URL)."
)
WORKER_WAIT = typer.Option(
    WORKER_WAIT_S,
    "--worker-wait",
    help="Seconds to wait with no worker up (a lost node, an autoscaler adding one) "
    "before failing; finished shards are kept for --resume.",
)
TEMPERATURE = typer.Option(
    1.0, "--temperature", help="Sampling temperature T: z ~ N(0, T^2 I); below 1, more typical."
)
JUDGE = typer.Option(
    None,
    "--judge",
    help="judge.onnx written by `vaegen judge`: keep only samples it judges to be their label.",
)
MIN_CONFIDENCE = typer.Option(
    None,
    "--min-confidence",
    help=f"With --judge: the least probability of the label [default: {DEFAULT_MIN_CONFIDENCE}, "
    "top-1 agreement alone].",
    show_default=False,
)
MIN_ACCEPTANCE = typer.Option(
    None,
    "--min-acceptance",
    help=f"With --judge: stop (exit 2) when a class is accepted less often than this "
    f"[default: {DEFAULT_MIN_ACCEPTANCE}].",
    show_default=False,
)
RESUME = typer.Option(False, "--resume", help="Finish an interrupted job in --out.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing dataset.")


@app.command()
@handle_errors
def generate(
    model: Path = MODEL,
    out: Path = OUT,
    num_samples: int = NUM_SAMPLES,
    class_counts: str | None = CLASS_COUNTS,
    classes: str | None = CLASSES,
    seed: int = SEED,
    temperature: float = TEMPERATURE,
    fmt: str = FORMAT,
    encoding: str | None = ENCODING,
    shard_size: int = SHARD_SIZE,
    batch_size: int | None = BATCH_SIZE,
    workers: int | None = WORKERS,
    gpus_per_worker: float = GPUS_PER_WORKER,
    judge: Path | None = JUDGE,
    min_confidence: float | None = MIN_CONFIDENCE,
    min_acceptance: float | None = MIN_ACCEPTANCE,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    ray_address: str | None = RAY_ADDRESS_OPTION,
    worker_wait: float = WORKER_WAIT,
    metrics_port: int | None = METRICS_PORT_OPTION,
    metrics_host: str = METRICS_HOST_OPTION,
    metrics_linger: float = METRICS_LINGER,
    pushgateway: str | None = PUSHGATEWAY,
) -> None:
    """Generate a labeled dataset from a decoder.onnx on a pool of Ray actors."""
    from workers.job import run_generation
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
        temperature=temperature,
        judge=None if judge is None else str(judge),
        min_confidence=min_confidence,
    )
    options = GenerateOptions(
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        resume=resume,
        overwrite=overwrite,
        ray_address=ray_address,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        pushgateway=pushgateway,
        metrics_linger=metrics_linger,
        worker_wait=worker_wait,
        **_floor(min_acceptance, judge),
    )
    _report(run_generation(spec, out, options), out)


def _floor(min_acceptance: float | None, judge: Path | None) -> dict[str, float]:
    """--min-acceptance, for GenerateOptions; it means nothing without a judge."""
    if min_acceptance is None:
        return {}
    if judge is None:
        raise VaegenError("--min-acceptance needs --judge JUDGE/judge.onnx")
    return {"min_acceptance": min_acceptance}


def _report(manifest: dict, out: Path) -> None:
    ex = manifest["execution"]
    rate = ex["generated_samples"] / max(ex["seconds"], 1e-9)
    print(
        f"wrote {manifest['num_rows']} samples in {manifest['num_shards']} shards to {out} "
        f"({ex['generated_samples']} generated, {rate:,.0f} samples/s)"
    )
    if "judge" in manifest:
        drawn, accepted = (sum(manifest["judge"][k].values()) for k in ("drawn", "accepted"))
        print(f"the judge accepted {accepted} of {drawn} samples drawn "
              f"({accepted / max(drawn, 1):.1%}); per class: manifest.json `judge`")  # fmt: skip
