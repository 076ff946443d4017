"""Shared CLI plumbing: errors become one line and an exit code, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from vaegen.errors import VaegenError

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
