"""The root `vaegen` command: every stage is listed, errors are one line, imports stay ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from vaegen import __version__
from vaegen.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "export", "generate", "eval", "pipeline"):
        assert command in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_stage_packages_are_this_repos() -> None:
    """Another PyPI distribution also installs a top-level `trainer`; ours must win."""
    import exporter
    import trainer
    import workers
    from eval import run as eval_run

    for module in (trainer, exporter, workers, eval_run):
        assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_console_script_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    vaegen = Path(sys.executable).with_name("vaegen")
    proc = subprocess.run(
        [str(vaegen), "train", "--epochs", "0", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --epochs must be >= 1; got 0"]
