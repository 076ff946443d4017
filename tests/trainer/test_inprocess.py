"""The default layout on one machine trains in this process (Ray Train's local mode) and keeps
what the result needs: per-epoch checkpoints, restarts after a failure, resume in either layout.

No `local_ray` fixture here: with a Ray connected, a run joins it instead (tested below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainer.loop
from trainer.checkpoint import load_model
from trainer.config import ModelConfig, TrainConfig
from trainer.inprocess import LOCAL_DIR, latest_checkpoint, save_checkpoint, wanted
from trainer.run import train
from trainer.timeline import TIMELINE_FILE

VAEGEN = str(Path(sys.executable).with_name("vaegen"))
CFG = ModelConfig(model="cvae", arch="mlp", hidden_dims=(64,))


@pytest.fixture(autouse=True, scope="module")
def _no_ray_connected() -> None:
    """An earlier module's CLI test may leave this process connected to a Ray."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _write_state(epoch: int) -> object:
    return lambda d: (d / "state.json").write_text(json.dumps({"epoch": epoch}))


def test_only_a_lone_local_default_run_trains_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert wanted(None, 0, False)
    assert not wanted("ray://head:10001", 0, False)
    assert not wanted(None, 1, False)  # --workers 1: one Ray Train worker actor
    assert not wanted(None, 0, True)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert not wanted(None, 0, False)


def test_checkpoints_are_renamed_into_place_and_pruned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints" / LOCAL_DIR
    for epoch in range(4):
        save_checkpoint(root, epoch, _write_state(epoch), keep=2)
    assert sorted(p.name for p in root.iterdir()) == [
        "checkpoint_epoch_000002",
        "checkpoint_epoch_000003",
    ]
    # Newest epoch across both layouts; a folder being written or unreadable is skipped.
    ray_dir = tmp_path / "checkpoints" / "train" / "checkpoint_2026-12-07_00-00-00"
    ray_dir.mkdir(parents=True)
    (ray_dir / "state.json").write_text(json.dumps({"epoch": 5}))
    (root / ".checkpoint_epoch_000009.tmp").mkdir()
    (root / ".checkpoint_epoch_000009.tmp" / "state.json").write_text(json.dumps({"epoch": 9}))
    (root / "checkpoint_epoch_000008").mkdir()
    (root / "checkpoint_epoch_000008" / "state.json").write_text("{trunc")
    assert latest_checkpoint(tmp_path / "checkpoints") == ray_dir
    assert latest_checkpoint(tmp_path / "nothing") is None


@pytest.mark.slow
def test_default_run_trains_here_without_starting_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run = tmp_path / "run"
    result = train(CFG, TrainConfig(epochs=3, keep_checkpoints=2), run, show_progress=False)
    assert not ray.is_initialized()
    assert [e["epoch"] for e in _log(run)] == [0, 1, 2]
    assert result.metrics["epoch"] == 2
    kept = sorted(p.name for p in (run / "checkpoints" / LOCAL_DIR).iterdir())
    assert kept == ["checkpoint_epoch_000001", "checkpoint_epoch_000002"]
    _, info = load_model(run)
    layout = info.train["layout"]
    assert layout["in_process"] and layout["workers"] == 1 and info.train["workers"] == 1
    steps = [e["name"] for e in json.loads((run / TIMELINE_FILE).read_text())["events"]]
    assert "worker: epoch 2 checkpoint written" in steps and "Ray started" not in steps
    # A resume with no epoch left to run rebuilds RUN/model from the newest checkpoint.
    again = train(CFG, TrainConfig(epochs=3), run, resume=True, show_progress=False)
    assert again.epochs_run == 0 and again.metrics["epoch"] == 2


@pytest.mark.slow
def test_a_failed_attempt_restarts_from_the_newest_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    real = trainer.loop._run_epoch
    failed: list[int] = []

    def flaky(model, loader, parts, epoch, gen):  # noqa: ANN001, ANN202 - _run_epoch's own
        if epoch == 2 and parts is not None and not failed:
            failed.append(epoch)
            raise RuntimeError("worker lost")
        return real(model, loader, parts, epoch, gen)

    monkeypatch.setattr(trainer.loop, "_run_epoch", flaky)
    run = tmp_path / "run"
    train(CFG, TrainConfig(epochs=4, max_failures=1), run, show_progress=False)
    assert failed == [2]
    assert [e["epoch"] for e in _log(run)] == [0, 1, 2, 3]  # epoch 2 again, from epoch 1's
    assert "restarting from the newest checkpoint (failure 1, --max-failures 1)" in (
        capsys.readouterr().out
    )
    failed.clear()
    with pytest.raises(RuntimeError, match="worker lost"):
        train(CFG, TrainConfig(epochs=4, max_failures=0), tmp_path / "no-retry")


@pytest.mark.slow
def test_resume_crosses_layouts(tmp_path: Path) -> None:
    """In process, then one Ray Train worker actor (--workers 1), then in process again."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    base = [VAEGEN, "train", "--dataset", "digits", "--model", "cvae", "--hidden-dims", "64"]
    for extra in (["--epochs", "2"], ["--epochs", "3", "--workers", "1", "--resume"]):
        done = subprocess.run([*base, *extra, "--out", str(run)], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
    assert [e["epoch"] for e in _log(run)] == [0, 1, 2]
    assert [e["world_size"] for e in _log(run)] == [1, 1, 1]
    assert latest_checkpoint(run / "checkpoints").parent.name == "train"  # Ray Train's folder
    train(CFG, TrainConfig(epochs=4), run, resume=True, show_progress=False)
    assert [e["epoch"] for e in _log(run)] == [0, 1, 2, 3]
    assert latest_checkpoint(run / "checkpoints").parent.name == LOCAL_DIR
