"""Shared CLI plumbing: errors become one line and an exit code, never a traceback."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from vaegen.errors import VaegenError
from vaegen.options import build as build_config
from vaegen.options import flag_fields

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "VAEGEN_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def handle_errors(func: F) -> F:
    """Wrap a command: VaegenError -> its exit code (2 for bad input); anything else -> 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except VaegenError as exc:
            if debug_enabled():
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence for the CLI
            if debug_enabled():
                raise
            message = " ".join(str(exc).split())
            print(
                f"internal error: {type(exc).__name__}: {message} (rerun with --debug)",
                file=sys.stderr,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def single_command_app(help_text: str) -> typer.Typer:
    """A stage's own Typer app: one command, invoked directly in tests with CliRunner."""
    return typer.Typer(help=help_text, add_completion=False, pretty_exceptions_enable=False)


def flag_command(
    *configs: type, build: Callable[..., Any] | None = None
) -> Callable[[F], Callable[..., Any]]:
    """Give a command one `--name` option per flag of `configs` (see vaegen.options).

    The command's first parameter receives `build(**flag values)`, by default the one config
    itself: the frozen config, built once. Its other parameters stay as declared. Put it under
    `handle_errors`, so that a refused value exits 2 like any other.
    """
    if build is None and len(configs) != 1:
        raise TypeError("flag_command needs build= to make several configs")

    def decorate(func: F) -> Callable[..., Any]:
        fields = [f for f in flag_fields(*configs) if f.flag.cli]
        hints = typing.get_type_hints(func)
        own = list(inspect.signature(func).parameters.values())[1:]
        params = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(f.cli_default, help=f.flag.help),
                annotation=f.type,
            )
            for f in fields
        ]
        params += [p.replace(kind=p.KEYWORD_ONLY, annotation=hints[p.name]) for p in own]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in fields}
            made = build(**values) if build else build_config(configs[0], values)
            return func(made, **kwargs)

        del command.__wrapped__  # Typer reads the signature below, not func's
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


RAY_ADDRESS_OPTION = typer.Option(
    None,
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="Ray cluster to join (ray://host:10001 or host:6379); default: start a local Ray.",
)
METRICS_PORT_OPTION = typer.Option(
    None, "--metrics-port", help="Serve Prometheus metrics on this port while running."
)
METRICS_HOST_OPTION = typer.Option("127.0.0.1", "--metrics-host", help="Metrics bind address.")


def serve_metrics_if_asked(port: int | None, host: str) -> None:
    """--metrics-port given: serve this process's Prometheus metrics while the command runs."""
    if port is not None:
        from vaegen.telemetry import serve_metrics

        serve_metrics(port, host)
