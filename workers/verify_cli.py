"""`vaegen verify DATASET`: a thin Typer layer over workers.verify.verify_dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from vaegen.cliutil import handle_errors, single_command_app

app = single_command_app("Check a dataset's shards against its manifest.")


@app.command()
@handle_errors
def verify(dataset: Path = typer.Argument(..., help="Dataset folder (DATASET).")) -> None:
    """Check every shard against manifest.json (size, sha256, rows, class counts); exit 1 if bad."""
    from workers.verify import verify_dataset

    verdict = verify_dataset(dataset)
    print(verdict.summary())
    if not verdict.intact:
        raise typer.Exit(1)
