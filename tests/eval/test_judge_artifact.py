"""`vaegen judge`: the JUDGE/ file set, judge.onnx against torch, loading it without torch,
exit codes, and `get_judge(artifact=...)` (what `vaegen eval --judge` uses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eval.judge import get_judge, predict
from eval.judge_artifact import ARTIFACT_FILES, load_judge_artifact
from eval.judge_cli import app
from trainer.datasets import dataset_fingerprint
from vaegen.errors import VaegenError
from vaegen.judge_onnx import JudgeSession

REPO = Path(__file__).resolve().parents[2]
STEPS = "150"


def _judge(out: Path, cache: Path, *extra: str) -> Any:
    args = ["--dataset", "digits", "--out", str(out), "--steps", STEPS, "--device", "cpu"]
    return CliRunner().invoke(app, [*args, "--cache-dir", str(cache), *extra])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("judge")
    result = _judge(root / "JUDGE", root / "cache")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "parity judge.onnx" in result.output
    return root / "JUDGE"


def test_exact_file_set_and_nothing_left_beside(artifact: Path) -> None:
    assert sorted(p.name for p in artifact.iterdir()) == sorted(ARTIFACT_FILES)
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["JUDGE", "cache"]


def test_config_records_spec_dataset_and_accuracy(artifact: Path, digits: Any) -> None:
    config = json.loads((artifact / "judge.json").read_text())
    _, test = digits
    assert config["spec"]["steps"] == int(STEPS)
    assert config["dataset"] == "digits"
    assert config["dataset_fingerprint"] == dataset_fingerprint("digits")
    assert config["class_names"] == list(test.class_names)
    assert config["image_shape"] == list(test.image_shape)
    assert 0.8 < config["test_accuracy"] <= 1.0
    assert config["num_train"] > 1000
    assert "ok" in config["onnx_parity"]
    judge = load_judge_artifact(artifact, dataset_fingerprint("digits"), torch.device("cpu"))
    acc = float((predict(judge.net, test.images, torch.device("cpu")) == test.labels).mean())
    assert acc == pytest.approx(config["test_accuracy"])


def test_onnx_matches_torch_and_carries_its_metadata(artifact: Path, digits: Any) -> None:
    _, test = digits
    session = JudgeSession(artifact / "judge.onnx")
    meta = session.meta
    config = json.loads((artifact / "judge.json").read_text())
    assert meta.num_classes == 10 and list(meta.class_names) == config["class_names"]
    assert list(meta.image_shape) == config["image_shape"] and meta.dataset == "digits"
    assert meta.test_accuracy == config["test_accuracy"]
    assert meta.extra["source_sha256"] == config["weights_sha256"]
    inputs = session.session.get_inputs()
    assert [i.name for i in inputs] == ["image"] and inputs[0].shape[0] == "batch"
    judge = load_judge_artifact(artifact, None, torch.device("cpu"))
    for size in (1, 5, len(test.images)):
        x = test.images[:size]
        probs, feats = session.predict(x)
        with torch.no_grad():
            ref_feats, logits = judge.net.forward_features(torch.from_numpy(x).float() / 255.0)
        np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(feats, ref_feats.numpy(), rtol=1e-4, atol=1e-4)
        assert feats.shape == (size, judge.spec.feature_dim)
    full_probs, _ = session.predict(test.images)
    agree = (full_probs.argmax(1) == predict(judge.net, test.images, torch.device("cpu"))).mean()
    assert agree >= 0.999
    with pytest.raises(VaegenError, match="uint8"):
        session.predict(test.images.astype(np.float32))


def test_loads_and_runs_with_onnxruntime_alone(artifact: Path) -> None:
    # torch, trainer, eval and exporter cannot be imported in this interpreter.
    code = (
        "import sys\n"
        "for name in ('torch', 'trainer', 'eval', 'exporter', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from vaegen.judge_onnx import JudgeSession\n"
        "s = JudgeSession(sys.argv[1], threads=1)\n"
        "x = np.random.default_rng(0).integers(0, 256, (3, *s.meta.image_shape), dtype=np.uint8)\n"
        "probs, feats = s.predict(x)\n"
        "print(probs.shape, feats.shape, round(float(probs.sum()), 3), s.meta.num_classes)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(artifact / "judge.onnx")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0].startswith("(3, 10) (3, ")
    assert result.stdout.split()[-2:] == ["3.0", "10"]


def test_rewriting_an_existing_judge_reuses_the_cache(artifact: Path) -> None:
    before = (artifact / "judge.safetensors").read_bytes()
    result = _judge(artifact, artifact.parent / "cache")
    assert result.exit_code == 0, result.output
    assert "cached" in result.output
    assert (artifact / "judge.safetensors").read_bytes() == before  # deterministic, cached
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["JUDGE", "cache"]


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (tmp_path / "j1", ["--dataset", "mnist", "--data-dir", str(tmp_path / "missing")]),
        (tmp_path / "j2", ["--dataset", "imagefolder:" + str(tmp_path / "nowhere")]),
        (other, ["--dataset", "digits"]),
        (blocker, ["--dataset", "digits"]),
        (blocker / "sub" / "JUDGE", ["--dataset", "digits"]),
    ]
    for out, args in cases:
        result = CliRunner().invoke(
            app, [*args, "--out", str(out), "--steps", "5", "--cache-dir", str(cache)]
        )
        assert result.exit_code == 2, (args, out, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert (other / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "j1").exists() and not (tmp_path / "j2").exists()


def test_eval_uses_the_artifact_and_refuses_another_datasets(artifact: Path, digits: Any) -> None:
    _, test = digits

    def no_training() -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("an artifact judge must not train")

    args = (no_training, test.images, test.labels, list(test.class_names), torch.device("cpu"))
    spec = load_judge_artifact(artifact, None, torch.device("cpu")).spec
    judge = get_judge(spec, dataset_fingerprint("digits"), *args, artifact=artifact)
    assert judge.weights_path == artifact / "judge.safetensors"
    judge_via_onnx = get_judge(
        spec, dataset_fingerprint("digits"), *args, artifact=artifact / "judge.onnx"
    )
    assert judge_via_onnx.test_accuracy == judge.test_accuracy
    with pytest.raises(VaegenError, match="another dataset"):
        get_judge(spec, dataset_fingerprint("mnist"), *args, artifact=artifact)
    with pytest.raises(VaegenError, match="not a judge folder"):
        get_judge(spec, "x", *args, artifact=artifact.parent / "cache")


def test_vaegen_eval_judge_scores_with_the_artifact(
    artifact: Path, cvae_run: Path, tmp_path: Path
) -> None:
    from eval.cli import app as eval_app

    out = tmp_path / "report"
    args = [str(cvae_run), "--out", str(out), "--cas", "--num-samples", "200", "--device", "cpu"]
    # An empty cache: the artifact is used, nothing is trained or written there.
    cache = tmp_path / "empty-cache"
    result = CliRunner().invoke(
        eval_app, [*args, "--judge", str(artifact), "--cache-dir", str(cache)]
    )
    assert result.exit_code == 0, result.output
    judge = json.loads((out / "metrics.json").read_text())["judge"]
    config = json.loads((artifact / "judge.json").read_text())
    assert judge["path"] == str(artifact / "judge.safetensors")
    assert judge["test_accuracy"] == config["test_accuracy"]
    assert not cache.exists() or not any(cache.iterdir())
    missing = CliRunner().invoke(eval_app, [*args, "--judge", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "--judge" in missing.output.strip().splitlines()[-1]
