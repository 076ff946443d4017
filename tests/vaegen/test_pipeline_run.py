"""`vaegen pipeline` end to end on digits: every stage runs, then an unchanged rerun skips all,
and a changed [generate] section reruns only generate and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaegen.pipeline import load_config, run_pipeline
from vaegen.pipeline_cli import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

CONFIG = """
out = "{out}"

[train]
dataset = "digits"
model = "cvae"
hidden_dims = [64]
epochs = 2
workers = 1

[generate]
num_samples = {n}
shard_size = 300
batch_size = 300

[eval]
iwae_k = 4
fid = true
cas = true
judge_steps = 200
kid_subsets = 10
cache_dir = "{cache}"
"""


def _write(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "p.toml"
    text = CONFIG.format(out=tmp_path / "out", n=n, cache=tmp_path / "cache")
    path.write_text(text)
    return path


def test_pipeline_runs_then_skips_then_reruns_downstream(tmp_path: Path) -> None:
    path = _write(tmp_path, 600)
    result = CliRunner().invoke(app, ["--config", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert "report:" in result.output and "CAS accuracy" in result.output
    for artifact in (
        "run/model/model.safetensors",
        "run/export/decoder.onnx",
        "dataset/manifest.json",
        "report/metrics.json",
        "report/report.html",
    ):
        assert (out / artifact).is_file(), artifact  # fmt: skip
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["num_rows"] == 600
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["cas"]["cas_accuracy"] is not None

    logs: list[str] = []
    assert set(run_pipeline(load_config(path), log=logs.append).values()) == {"skipped"}

    path = _write(tmp_path, 900)
    outcome = run_pipeline(load_config(path), log=logs.append)
    assert outcome == {"train": "skipped", "export": "skipped", "generate": "ran", "eval": "ran"}
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert manifest["num_rows"] == 900
