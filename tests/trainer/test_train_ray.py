"""Ray Train end to end on a real local Ray: logs, checkpoints, resume, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from trainer.checkpoint import MODEL_FILES, load_model
from trainer.config import LossConfig, ModelConfig, TrainConfig
from trainer.run import train
from vaegen.errors import VaegenError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
REPO = Path(__file__).resolve().parents[2]
VAEGEN = str(Path(sys.executable).with_name("vaegen"))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _digits_cfg(**kw: object) -> ModelConfig:
    return ModelConfig(model="cvae", arch="mlp", hidden_dims=(128, 64), **kw)


def test_cvae_on_digits_improves_and_writes_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(_digits_cfg(), TrainConfig(epochs=6, workers=2), run, show_progress=False)
    log = _log(run)
    assert [e["epoch"] for e in log] == list(range(6))
    assert all(e["world_size"] == 2 for e in log)
    assert log[-1]["test_elbo"] > log[0]["test_elbo"] + 2.0  # nats per image
    assert {p.name for p in (run / "model").iterdir()} == MODEL_FILES
    model, info = load_model(run)
    assert info.metrics["epoch"] == 5
    assert info.dataset["class_names"] == [str(i) for i in range(10)]
    assert result.metrics["test_elbo"] == pytest.approx(log[-1]["test_elbo"])
    with pytest.raises(VaegenError, match="--resume"):
        train(_digits_cfg(), TrainConfig(epochs=6, workers=2), run, show_progress=False)


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("vaegen_train")
    }


def test_resume_continues_from_the_latest_checkpoint(tmp_path: Path) -> None:
    from vaegen.telemetry import serve_metrics

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = serve_metrics(port)
    run = tmp_path / "run"
    cfg = TrainConfig(epochs=2, workers=1, loss=LossConfig(kl_warmup_epochs=2))
    before = _scrape(port).get("vaegen_train_epoch_seconds_count", 0.0)
    train(_digits_cfg(), cfg, run, show_progress=False)
    scraped = _scrape(port)
    server.shutdown()
    assert scraped["vaegen_train_epoch_seconds_count"] == before + 2
    assert scraped['vaegen_train_loss{term="test_elbo"}'] == pytest.approx(
        _log(run)[-1]["test_elbo"]
    )
    more = TrainConfig(epochs=4, workers=1, loss=LossConfig(kl_warmup_epochs=2))
    result = train(_digits_cfg(), more, run, resume=True, show_progress=False)
    assert [e["epoch"] for e in _log(run)] == [0, 1, 2, 3]
    assert result.epochs_run == 2
    assert _log(run)[0]["kl_weight"] == pytest.approx(0.5)


def test_rgb_imagefolder_with_spaces_trains_with_conv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for name, colour in (("red square", (200, 30, 30)), ("blue circle", (30, 30, 200))):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 40, (12, 12, 3)) + np.array(colour)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    spec = f"imagefolder:{root}"
    model_cfg = ModelConfig(
        model="cvae",
        arch="conv",
        image_shape=(3, 12, 12),
        num_classes=2,
        hidden_dims=(32,),
        conv_channels=(8, 16),
    )
    train(
        model_cfg,
        TrainConfig(dataset=spec, epochs=2, workers=1),
        tmp_path / "run",
        show_progress=False,
    )
    _, info = load_model(tmp_path / "run")
    assert info.class_names == ["blue circle", "red square"]
    assert info.config.image_shape == (3, 12, 12)


def _train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::RayTrainWorker"):
            found.append(proc)
    return found


def test_killed_worker_restarts_from_last_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = dict(os.environ, VAEGEN_TEST_EPOCH_SLEEP="1.5")
    env.pop("RAY_ADDRESS", None)
    cmd = [
        VAEGEN,
        "train",
        "--dataset",
        "digits",
        "--model",
        "cvae",
        "--hidden-dims",
        "64",
        "--epochs",
        "6",
        "--workers",
        "2",
        "--out",
        str(run),
    ]
    before = {p.pid for p in _train_workers()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            log = run / "train_log.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        victims = [p for p in _train_workers() if p.pid not in before]
        assert victims, "no Ray Train worker process found"
        victims[0].send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    epochs = [e["epoch"] for e in _log(run)]
    assert epochs[-1] == 5
    assert sorted(set(epochs)) == list(range(6))
    _, info = load_model(run)
    assert info.metrics["epoch"] == 5
