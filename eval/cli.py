"""`vaegen eval RUN --out REPORT`: likelihood, FID/KID/PR, CAS, and an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import handle_errors, single_command_app

app = single_command_app("Score a trained model and its generated data.")


@app.command()
@handle_errors
def main(
    run: Path = typer.Argument(..., help="The training run directory (RUN or RUN/model)."),
    out: Path = typer.Option(..., "--out", help="REPORT directory to write."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Real data to score against (default: RUN's training dataset)."
    ),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Folder holding the dataset's files (offline MNIST etc.)."
    ),
    samples: str | None = typer.Option(
        None, "--samples", help="A generated DATASET dir (default: draw from RUN's decoder)."
    ),
    iwae_k: int | None = typer.Option(
        None, "--iwae-k", help="IWAE NLL with K importance samples per image (e.g. 5000)."
    ),
    fid: bool = typer.Option(False, "--fid", help="FID, KID, precision/recall (+ per class)."),
    cas: bool = typer.Option(
        False, "--cas", help="Classification accuracy score and label fidelity."
    ),
    inception_weights: str | None = typer.Option(
        None,
        "--inception-weights",
        help="torch-fidelity InceptionV3 weights (.pth) for FID instead of the judge CNN; "
        "implies --fid.",
    ),
    num_samples: int | None = typer.Option(
        None, "--num-samples", help="Generated images to score (default: the test split's size)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling z, the ELBO and IWAE."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Judge cache (default $VAEGEN_CACHE/judges or ~/.cache/...)."
    ),
) -> None:
    """Score RUN: ELBO/IWAE on the real test split, FID/KID/PR and CAS on generated data."""
    from eval.report import headline_rows
    from eval.run import evaluate

    metrics = evaluate(
        run,
        out,
        dataset=dataset,
        data_dir=data_dir,
        samples=samples,
        iwae_k=iwae_k,
        fid=fid,
        cas=cas,
        inception_weights=inception_weights,
        num_samples=num_samples,
        seed=seed,
        batch_size=batch_size,
        device=device,
        cache_dir=cache_dir,
    )
    rows = headline_rows(metrics, skip_null=True)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    total = metrics["timings_seconds"]["total"]
    print(f"report: {out / 'report.html'} (metrics.json, figures/) in {total:.1f}s")
