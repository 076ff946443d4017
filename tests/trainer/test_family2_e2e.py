"""Each #14 flag end to end on digits, through the `vaegen` CLI on one local Ray: `train` under
Ray Train with 2 workers, `train --resume` for more epochs from the checkpoint, `export` to ONNX,
`generate` on Ray actors. RUN/model keeps exactly its two files whatever the flag."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from trainer.checkpoint import MODEL_FILES
from trainer.datasets import dataset_fingerprint, load_dataset
from trainer.judge_net import JudgeNet, JudgeSpec, save_judge_file
from vaegen.cli import app
from vaegen.dataset_reader import read_shard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

EPOCHS, MORE = 3, 4
CLASSES = (0, 7)
COMMON = ("--dataset", "digits", "--model", "cvae", "--hidden-dims", "128,64", "--batch-size",
          "32", "--workers", "2")  # fmt: skip


def _ok(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits JUDGE folder's weights and sidecar (what `vaegen judge` writes beside judge.onnx),
    from a briefly trained judge."""
    from eval.judge import train_classifier

    train = load_dataset("digits", "train")
    spec = JudgeSpec(train.image_shape, train.num_classes, steps=40)
    net = train_classifier(spec, train.images, train.labels, torch.device("cpu"))
    folder = tmp_path_factory.mktemp("JUDGE")
    meta = {"dataset": "digits", "dataset_fingerprint": dataset_fingerprint("digits")}
    save_judge_file(folder / "judge.safetensors", net, spec, meta)
    assert isinstance(net, JudgeNet)
    return folder


def _train_resume_export_generate(
    run: Path, flags: list[str], tmp_path: Path, epochs: tuple[int, int] = (EPOCHS, MORE)
) -> tuple[np.ndarray, np.ndarray]:
    """The four stages (train `epochs[0]`, resume to `epochs[1]`); the generated images and
    labels, once the manifest is checked."""
    first, more = epochs
    _ok("train", *COMMON, "--epochs", str(first), *flags, "--out", str(run))
    assert [e["world_size"] for e in _log(run)] == [2] * first
    _ok("train", *COMMON, "--epochs", str(more), *flags, "--out", str(run), "--resume")
    log = _log(run)
    assert [e["epoch"] for e in log] == list(range(more))  # continued, not restarted
    assert {p.name for p in (run / "model").iterdir()} == MODEL_FILES
    _ok("export", str(run))
    dataset = tmp_path / "ds"
    _ok("generate", str(run / "export" / "decoder.onnx"), "--num-samples", "200",
        "--classes", "0,7", "--shard-size", "100", "--workers", "2", "--seed", "0",
        "--out", str(dataset))  # fmt: skip
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 200
    rows = [read_shard(dataset / shard["file"]) for shard in manifest["shards"]]
    labels = np.concatenate([r.labels for r in rows])
    assert sorted(np.bincount(labels)[list(CLASSES)]) == [100, 100]
    return np.concatenate([r.images for r in rows]).astype(np.float64), labels


def _own_and_other_class_distance(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[own, other] distance of each class's mean sample to the real class means, per class."""
    real = load_dataset("digits", "test")

    def means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([x[y == c].reshape((y == c).sum(), -1).mean(0) for c in CLASSES])

    fake_means, real_means = (
        means(images, labels),
        means(real.images.astype(np.float64), real.labels),
    )
    dist = np.linalg.norm(fake_means[:, None] - real_means[None], axis=-1)
    return np.stack([np.diag(dist), np.diag(dist[:, ::-1])], axis=1)  # CLASSES is a pair


def test_perceptual_weight_trains_resumes_exports_and_generates(
    judge_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    flags = ["--perceptual-weight", "1", "--perceptual-layers", "1,3", "--judge", str(judge_dir)]
    _train_resume_export_generate(run, flags, tmp_path)
    log = _log(run)
    assert log[-1]["train_perceptual"] < 0.8 * log[0]["train_perceptual"]  # it is minimised
    assert log[-1]["test_elbo"] > log[0]["test_elbo"] + 1.0
    loss = json.loads((run / "model" / "config.json").read_text())["train"]["loss"]
    weights = judge_dir / "judge.safetensors"
    assert loss["judge_weights"] == str(weights.resolve())
    assert loss["judge_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert loss["perceptual_layers"] == [1, 3]
    # Another judge is another objective: the resume is refused before Ray starts.
    other = tmp_path / "other"
    other.mkdir()
    spec = JudgeSpec((1, 8, 8), 10, seed=1)
    meta = {"dataset_fingerprint": dataset_fingerprint("digits")}
    save_judge_file(other / "judge.safetensors", JudgeNet(spec), spec, meta)
    result = CliRunner().invoke(app, ["train", *COMMON, "--epochs", "8", *flags[:4], "--judge",
                                      str(other), "--out", str(run), "--resume"])  # fmt: skip
    assert result.exit_code == 2 and "judge_sha256" in result.output


def test_adversarial_weight_trains_resumes_exports_and_generates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train_resume_export_generate(run, ["--adversarial-weight", "1"], tmp_path)
    log = _log(run)
    for entry in log:
        assert 0.0 <= entry["disc_accuracy"] <= 1.0 and entry["disc_loss"] > 0
    # It tells fakes apart, and is neither stuck at a constant verdict (0.5) nor all-knowing.
    assert 0.6 < np.mean([e["disc_accuracy"] for e in log[-2:]]) < 0.995
    assert log[-1]["test_elbo"] > log[0]["test_elbo"] + 1.0  # the pixel likelihood still learns
    checkpoints = sorted(
        p for p in (run / "checkpoints" / "train").glob("checkpoint_*") if p.is_dir()
    )
    names = {p.name for p in checkpoints[-1].iterdir()}
    assert {"discriminator.safetensors", "discriminator_optimizer.pt"} <= names


def test_labels_per_class_trains_resumes_exports_generates_and_evals(tmp_path: Path) -> None:
    from eval.run import evaluate

    run = tmp_path / "run"
    # 6 epochs: on digits' 8x8 images the decoder takes ~5 to lean on y rather than z.
    flags = ["--labels-per-class", "10"]
    images, labels = _train_resume_export_generate(run, flags, tmp_path, (5, 6))
    log = _log(run)
    assert log[-1]["test_classifier_accuracy"] > 0.7  # from 100 labels (chance: 0.1)
    assert log[-1]["test_elbo"] > log[0]["test_elbo"] + 1.0
    metrics = evaluate(run, tmp_path / "report", figures=False, device="cpu")
    classifier = metrics["classifier"]
    assert classifier["labels_per_class"] == 10
    assert classifier["test_accuracy"] == pytest.approx(
        log[-1]["test_classifier_accuracy"], abs=0.02
    )
    # A decoder that saw 100 labels makes a labeled dataset: each class's mean sample lies
    # nearer its own class's real mean.
    distances = _own_and_other_class_distance(images, labels)
    assert (distances[:, 0] < 0.7 * distances[:, 1]).all(), distances
