"""One writer per --out, with real processes: a second job is refused and deletes nothing, a
SIGKILLed job's lock does not block --resume, and --overwrite removes only vaegen's files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaegen.dataset_format import MANIFEST
from vaegen.dirlock import LOCK_NAME, hold_directory
from vaegen.errors import VaegenError
from workers.job import SHARD_GATE_ENV, run_generation
from workers.options import GenerateOptions
from workers.spec import JobSpec, build_spec
from workers.verify import verify_dataset

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--num-samples", "300", "--shard-size", "100", "--batch-size", "50", "--seed", "3"]


def _spec(model: Path) -> JobSpec:
    return build_spec(str(model), 300, shard_size=100, batch_size=50, seed=3)


def _files(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.name != LOCK_NAME}


def _generate(model: Path, out: Path, *extra: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "workers", str(model), *ARGS, "--workers", "1",
            "--out", str(out), *extra]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _wait_for_a_shard(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads((out / MANIFEST).read_text())["shards"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("the first job never wrote a shard")


@pytest.mark.slow
def test_a_second_job_on_a_busy_out_is_refused_and_deletes_nothing(
    cvae_onnx: Path, tmp_path: Path
) -> None:
    out, gate = tmp_path / "ds", tmp_path / "gate"
    first = subprocess.Popen(
        _generate(cvae_onnx, out), env=_env(**{SHARD_GATE_ENV: str(gate)}), cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_a_shard(out, first)  # the gate holds the first job after one shard
        before = _files(out)
        second = subprocess.run(
            _generate(cvae_onnx, out, "--overwrite"), env=_env(), cwd=REPO,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"pid {first.pid}" in line and "vaegen generate" in line, line
        assert _files(out) == before
        gate.touch()
        stdout, stderr = first.communicate(timeout=300)
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert verify_dataset(out).intact
    assert not (out / LOCK_NAME).exists()


def test_overwrite_keeps_an_unknown_file_and_refuses(
    local_ray, cvae_onnx: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    out = tmp_path / "ds"
    options = GenerateOptions(workers=1, show_progress=False)
    run_generation(_spec(cvae_onnx), out, options)
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    overwrite = GenerateOptions(workers=1, show_progress=False, overwrite=True)
    with pytest.raises(VaegenError, match=r"did not write \(notes.txt\)"):
        run_generation(_spec(cvae_onnx), out, overwrite)
    assert _files(out) == before
    (out / "notes.txt").unlink()
    # Stale shards of a bigger dataset go too: the format's own names are vaegen's.
    shutil.copy(out / "part-00000.parquet", out / "part-00009.parquet")
    run_generation(build_spec(str(cvae_onnx), 100, shard_size=100, batch_size=50), out, overwrite)
    assert sorted(_files(out)) == ["README.md", MANIFEST, "part-00000.parquet"]
    assert verify_dataset(out).intact


def test_a_locked_out_is_refused_before_anything_runs(cvae_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with hold_directory(out, "another job"), pytest.raises(VaegenError, match="another job"):
        run_generation(_spec(cvae_onnx), out, GenerateOptions(overwrite=True))
    assert not out.exists()  # the refused job created nothing (the holder's folder went too)
