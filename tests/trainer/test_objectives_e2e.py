"""Each #13 training flag end to end on digits, through the `vaegen` CLI on one local Ray:
`train` under Ray Train with 2 workers, `export` to ONNX, `generate` on Ray actors.

Two runs cover the four flags: the objectives exclude each other and so do the corruptions, so
each run pairs one objective with one corruption (the loop applies both in the same step). The
second also starts the decoder at the mean image (--init-output-bias).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from trainer.datasets import load_dataset
from vaegen.cli import app
from vaegen.dataset_reader import read_shard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

RUNS = {
    "iwae+gaussian": ("iwae", 5, "gaussian:0.3", []),
    "iwae-dreg+mask": ("iwae-dreg", 5, "mask:0.3", ["--init-output-bias"]),
}
CLASSES = (0, 7)
PER_CLASS = 100


def _ok(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _class_means(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([images[labels == c].reshape((labels == c).sum(), -1).mean(0) for c in CLASSES])


@pytest.mark.parametrize(
    ("objective", "iw_samples", "corrupt", "more"), RUNS.values(), ids=RUNS.keys()
)
def test_the_flag_trains_on_ray_exports_and_generates(
    objective: str, iw_samples: int, corrupt: str, more: list[str], tmp_path: Path
) -> None:
    run, dataset = tmp_path / "run", tmp_path / "ds"
    _ok("train", "--dataset", "digits", "--model", "cvae", "--hidden-dims", "128,64",
        "--epochs", "8", "--batch-size", "32", "--workers", "2", "--objective", objective,
        "--iw-samples", str(iw_samples), "--corrupt", corrupt, *more,
        "--out", str(run))  # fmt: skip
    log = _log(run)
    assert [e["world_size"] for e in log] == [2] * 8
    assert log[-1]["test_elbo"] > log[0]["test_elbo"] + 2.0  # nats per image: it learned
    train = json.loads((run / "model" / "config.json").read_text())["train"]
    assert train["init_output_bias"] == ("--init-output-bias" in more)
    loss = train["loss"]
    assert (loss["objective"], loss["iw_samples"], loss["corrupt"]) == (
        objective,
        iw_samples,
        corrupt,
    )

    _ok("export", str(run))
    _ok("generate", str(run / "export" / "decoder.onnx"), "--num-samples",
        str(PER_CLASS * len(CLASSES)), "--classes", ",".join(map(str, CLASSES)),
        "--shard-size", "100", "--workers", "2", "--seed", "0", "--out", str(dataset))  # fmt: skip
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == PER_CLASS * len(CLASSES)
    rows = [read_shard(dataset / shard["file"]) for shard in manifest["shards"]]
    labels = np.concatenate([r.labels for r in rows])
    images = np.concatenate([r.images for r in rows]).astype(np.float64)
    assert sorted(np.bincount(labels)[list(CLASSES)]) == [PER_CLASS] * len(CLASSES)
    # The samples follow their label: each class's mean sample lies nearer its own class's real
    # mean, by 2x (~4x measured; 8 epochs of batch 32 give the decoder's label its ~360 steps).
    real = load_dataset("digits", "test")
    fake_means = _class_means(images, labels)
    real_means = _class_means(real.images.astype(np.float64), real.labels)
    dist = np.linalg.norm(fake_means[:, None] - real_means[None], axis=-1)
    own, other = np.diag(dist), np.diag(dist[:, ::-1])  # CLASSES is a pair
    assert (own < 0.5 * other).all(), dist
