"""`vaegen judge --dataset D [--data-dir DIR] --out JUDGE`: a thin layer over build_judge."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import handle_errors, single_command_app

app = single_command_app("Train a dataset's judge classifier and write it as a portable artifact.")


@app.command()
@handle_errors
def judge(
    dataset: str = typer.Option(
        ..., "--dataset", help="digits, mnist, fashion-mnist or imagefolder:PATH."
    ),
    out: Path = typer.Option(..., "--out", help="JUDGE folder to write (new, empty, or a judge)."),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="Folder holding the dataset's files (offline MNIST etc.)."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Resize to a square, as `vaegen train --image-size` did."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Optimizer steps (default: the judge recipe's)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Judge cache (default $VAEGEN_CACHE/judges or ~/.cache/...)."
    ),
) -> None:
    """Train the judge on D's training split (or reuse the cached one), score it on the test
    split, and write JUDGE/ with judge.safetensors, judge.json and judge.onnx."""
    from eval.judge_artifact import build_judge
    from vaegen.dirlock import hold_published

    with hold_published(out, "vaegen judge"):  # beside JUDGE: it is published by a rename
        result = build_judge(
            dataset,
            out,
            data_dir=data_dir,
            image_size=image_size,
            steps=steps,
            device=device,
            cache_dir=cache_dir,
        )
    judge = result.judge
    source = "cached" if judge.cached else "trained"
    print(
        f"judge {result.out} ({source}, {result.seconds:.1f}s): {result.data.spec}, "
        f"{judge.spec.num_classes} classes, image {list(judge.spec.image_shape)}, "
        f"test accuracy {judge.test_accuracy:.4f}"
    )
    print(result.parity.summary())
