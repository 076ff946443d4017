"""`vaegen eval` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from vaegen.cliutil import handle_errors, single_command_app
from vaegen.errors import VaegenError

app = single_command_app("Not yet available.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def main(ctx: typer.Context) -> None:
    """Not yet available."""
    raise VaegenError("this command is not yet available")
