"""One `vaegen train` per RUN, and a --resume that cannot match refused before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from trainer.config import LossConfig, ModelConfig, TrainConfig
from trainer.resume import RUN_CONFIG, check_same_run
from vaegen.cli import app
from vaegen.dirlock import LOCK_NAME
from vaegen.errors import VaegenError

VAEGEN = str(Path(sys.executable).with_name("vaegen"))
ARGS = ["--dataset", "digits", "--model", "cvae", "--hidden-dims", "64", "--workers", "1"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-epoch run, trained in its own process (this one never starts Ray)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    done = subprocess.run(
        [VAEGEN, "train", *ARGS, "--epochs", "1", "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_resume_with_another_latent_dim_is_refused_before_ray(run: Path) -> None:
    import ray

    before = _snapshot(run)
    result = CliRunner().invoke(
        app, ["train", *ARGS, "--epochs", "2", "--latent-dim", "4", "--out", str(run), "--resume"]
    )
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert "latent_dim (16 -> 4)" in line, line
    assert not ray.is_initialized()
    assert _snapshot(run) == before and not (run / LOCK_NAME).exists()


def test_what_a_checkpoint_depends_on_must_match(run: Path) -> None:
    recorded = json.loads((run / RUN_CONFIG).read_text())
    model = ModelConfig.from_dict(recorded["model"])
    train = TrainConfig.from_dict(recorded["train"])
    check_same_run(run, model, TrainConfig.from_dict({**recorded["train"], "epochs": 9, "lr": 0.1}))
    iwae = LossConfig(objective="iwae", iw_samples=2)
    with pytest.raises(VaegenError, match=r"objective \('elbo' -> 'iwae'\)"):
        check_same_run(
            run, model, TrainConfig.from_dict({**recorded["train"], "loss": iwae.__dict__})
        )
    gaussian = ModelConfig.from_dict({**recorded["model"], "likelihood": "gaussian"})
    with pytest.raises(VaegenError, match="likelihood"):
        check_same_run(run, gaussian, train)
    with pytest.raises(VaegenError, match="dataset"):
        check_same_run(run, model, TrainConfig.from_dict({**recorded["train"], "dataset": "mnist"}))


def _wait_for_lock(run: Path, pid: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads((run / LOCK_NAME).read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("the first job never took the lock")


@pytest.mark.slow
def test_two_trains_on_one_run_the_second_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [VAEGEN, "train", *ARGS, "--epochs", "50", "--out", str(out)]
    first = subprocess.Popen(
        cmd, env=_env(VAEGEN_TEST_EPOCH_SLEEP="5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for_lock(out, first.pid, first)
        second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    finally:
        tree = psutil.Process(first.pid).children(recursive=True)
        first.kill()
        first.wait()
        for child in tree:
            if child.is_running():
                child.kill()
        psutil.wait_procs(tree, timeout=30)
    assert second.returncode == 2, second.stderr
    [line] = second.stderr.strip().splitlines()
    assert f"pid {first.pid}" in line and "vaegen train" in line, line
