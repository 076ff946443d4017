"""`vaegen eval RUN --out REPORT`: likelihood, FID/KID/PR, CAS, and an HTML report.

The options are the `flag` fields of eval/options.py: declare a new one there and it appears
here, in the pipeline's [eval] keys and in `evaluate`'s keywords.
"""

from __future__ import annotations

from pathlib import Path

import typer

from eval.options import EvalOptions
from vaegen.cliutil import flag_command, handle_errors, single_command_app

app = single_command_app("Score a trained model and its generated data.")


@app.command()
@handle_errors
@flag_command(EvalOptions)
def main(
    options: EvalOptions,
    run: Path = typer.Argument(..., help="The training run directory (RUN or RUN/model)."),
    out: Path = typer.Option(..., "--out", help="REPORT directory to write."),
) -> None:
    """Score RUN: ELBO/IWAE on the real test split, FID/KID/PR and CAS on generated data."""
    from eval.report import headline_rows
    from eval.run import evaluate

    metrics = evaluate(run, out, options)
    rows = headline_rows(metrics, skip_null=True)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    total = metrics["timings_seconds"]["total"]
    print(f"report: {out / 'report.html'} (metrics.json, figures/) in {total:.1f}s")
