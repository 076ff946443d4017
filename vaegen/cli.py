"""The `vaegen` command: one sub-command per stage, each a thin layer over library functions."""

from __future__ import annotations

import os

import typer

from vaegen import __version__
from vaegen.cliutil import DEBUG_ENV

app = typer.Typer(
    help="Train VAE/CVAE models on Ray, export decoders to ONNX, bulk-generate labeled "
    "synthetic datasets, and score them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"vaegen {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _register() -> None:
    """Each stage's cli.py owns one Typer app with one command; mount them by name."""
    from eval import cli as eval_cli
    from eval import judge_cli
    from exporter import cli as export_cli
    from trainer import cli as train_cli
    from vaegen import pipeline_cli
    from workers import cli as generate_cli
    from workers import verify_cli

    for name, stage in (
        ("train", train_cli),
        ("export", export_cli),
        ("judge", judge_cli),
        ("generate", generate_cli),
        ("eval", eval_cli),
        ("pipeline", pipeline_cli),
        ("verify", verify_cli),
    ):
        command = stage.app.registered_commands[0]
        app.command(name, help=command.help or (command.callback.__doc__ or ""))(command.callback)


_register()


def main() -> None:
    app()
