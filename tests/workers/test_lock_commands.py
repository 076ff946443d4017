"""Every command that writes a folder takes its lock first: a busy folder is refused with exit 2
and one line naming the holder, before the command reads or writes anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaegen.cli import app
from vaegen.dirlock import LOCK_NAME, hold_directory, hold_published


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--dataset", "digits", "--epochs", "1", "--out", "{busy}"],
        ["export", "{missing}", "--out", "{busy}/decoder.onnx"],
        ["eval", "{missing}", "--out", "{busy}"],
        ["generate", "{model}", "--num-samples", "10", "--out", "{busy}", "--overwrite"],
    ],
    ids=lambda c: c[0],
)
def test_a_busy_folder_is_refused(command: list[str], cvae_onnx: Path, tmp_path: Path) -> None:
    busy, missing = tmp_path / "busy", tmp_path / "no-such-run"
    (busy).mkdir()
    (busy / "keep.txt").write_text("the holder's")
    names = {"busy": busy, "missing": missing, "model": cvae_onnx}
    args = [part.format(**names) for part in command]
    with hold_directory(busy, "the-holder") as lock:
        result = CliRunner().invoke(app, args)
        assert lock.holder.token in lock.path.read_text()  # still the holder's
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert "in use by the-holder" in line and f"pid {lock.holder.pid}" in line, line
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert not (busy / LOCK_NAME).exists() and not missing.exists()


def test_a_busy_judge_folder_is_refused(tmp_path: Path) -> None:
    # JUDGE is published by renaming a staged folder onto it: its lock lives beside it.
    judge_cli = pytest.importorskip("eval.judge_cli")
    out = tmp_path / "judge"
    with hold_published(out, "the-holder") as lock:
        result = CliRunner().invoke(judge_cli.app, ["--dataset", "digits", "--out", str(out)])
        assert lock.holder.token in lock.path.read_text()
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert "in use by the-holder" in line and f"pid {lock.holder.pid}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []
