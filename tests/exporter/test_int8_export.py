"""`vaegen export --int8`: the int8 copy, its quality check against fp32, and its refusals.

A small CVAE trained on digits for a few seconds, and a judge for digits trained with few steps
and put in a per-module cache under the default judge spec, where `vaegen export` looks for it
(the default recipe takes minutes on this machine; the check only compares fp32 with int8, so
any decent judge will do).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.graph import check_graph
from exporter.metadata import read_metadata
from trainer.checkpoint import load_model, save_model
from trainer.config import ModelConfig
from trainer.datasets import dataset_fingerprint, load_dataset
from trainer.models import build_model

SAMPLES = "2000"  # --int8-samples: enough for stable figures on 8x8 digits


def _train_digits_cvae(out: Path, steps: int = 300) -> Path:
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    cfg = ModelConfig(model="cvae", image_shape=(1, 8, 8), latent_dim=8, hidden_dims=(128, 64))
    model = build_model(cfg).train()
    x = torch.from_numpy(train.images).float() / 255.0
    y = torch.from_numpy(train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        terms = model(x[idx], y[idx])
        loss = (terms.reconstruction + terms.kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dataset = {"name": "digits", "image_shape": [1, 8, 8], "class_names": list(train.class_names)}
    save_model(out / "model", model.eval(), dataset, {"dataset": "digits"}, {})
    return out


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JUDGE/ for digits from `vaegen judge`'s builder, with 60 steps (the default recipe takes
    minutes on this machine)."""
    from eval.judge_artifact import build_judge

    root = tmp_path_factory.mktemp("judge")
    return build_judge("digits", root / "JUDGE", steps=60, cache_dir=root / "cache").out


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory: pytest.TempPathFactory, judge_dir: Path) -> Iterator[Path]:
    """$VAEGEN_CACHE holding that judge under the default spec, where `vaegen export --int8`
    without --judge looks for the digits judge."""
    from eval.judge import JudgeSpec, cache_key, load_judge_file, save_judge_file

    cache = tmp_path_factory.mktemp("cache")
    net, _, meta = load_judge_file(judge_dir / "judge.safetensors")
    train = load_dataset("digits", "train")
    spec = JudgeSpec(image_shape=train.image_shape, num_classes=train.num_classes)
    name = f"{cache_key(dataset_fingerprint('digits'), spec)}.safetensors"
    save_judge_file(cache / "judges" / name, net, spec, meta)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEGEN_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory, judge_cache: Path) -> Path:
    return _train_digits_cvae(tmp_path_factory.mktemp("digits") / "run")


@pytest.fixture(scope="module")
def int8_export(digits_run: Path) -> tuple[Path, str]:
    result = CliRunner().invoke(app, [str(digits_run), "--int8", "--int8-samples", SAMPLES])
    assert result.exit_code == 0, result.output
    return digits_run / "export", result.stdout


def _copy_with_outlier(run: Path, out: Path) -> Path:
    """The same decoder plus one hidden unit of huge activation (bias 1e4) that no later layer
    reads: fp32 images are unchanged, but a per-tensor activation scale sized for 1e4 rounds
    every other activation to zero in int8."""
    model, info = load_model(run)
    first, second = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][:2]
    with torch.no_grad():
        first.bias[0] = 1e4
        second.weight[:, 0] = 0.0
    save_model(out / "model", model, info.dataset, info.train, {})
    return out


def test_int8_file_has_the_fp32_contract_plus_its_precision(int8_export) -> None:
    export, stdout = int8_export
    assert sorted(p.name for p in export.iterdir()) == ["decoder.int8.onnx", "decoder.onnx"]
    fp32, int8 = export / "decoder.onnx", export / "decoder.int8.onnx"
    check_graph(int8, "int8")
    meta = read_metadata(int8)
    assert meta.pop("precision") == "int8" and meta.pop("quantization") == "dynamic-per-channel"
    fp32_meta = read_metadata(fp32)
    assert fp32_meta.pop("precision") == "fp32" and meta == fp32_meta
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)
    ]
    signature = [
        [(v.name, v.type, v.shape) for v in (*s.get_inputs(), *s.get_outputs())] for s in sessions
    ]
    assert signature[0] == signature[1]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "Gemm" not in ops
    # Close to fp32 in pixels, not equal (or it would not be int8 arithmetic).
    rng = np.random.default_rng(1)
    feeds = {"z": rng.standard_normal((500, 8), dtype=np.float32), "y": np.arange(500) % 10}
    a, b = (s.run(["image"], feeds)[0].astype(int) for s in sessions)
    assert 0 < np.abs(a - b).mean() < 2.0
    assert "int8 copy (dynamic-per-channel)" in stdout
    summary = next(line for line in stdout.splitlines() if line.startswith("int8 quality"))
    assert "2,000 samples" in summary and "pixels mean|diff|" in summary and summary.endswith("ok")


def test_int8_quality_drop_fails_the_export_and_leaves_nothing(digits_run, tmp_path) -> None:
    run = _copy_with_outlier(digits_run, tmp_path / "outlier")
    result = CliRunner().invoke(app, [str(run), "--int8", "--int8-samples", SAMPLES])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "int8 quality" in lines[0] and "FAILED" in lines[0] and "nothing was written" in lines[0]
    assert not (run / "export").exists() or not any((run / "export").iterdir())
    # The tolerances are options: loose enough, the same int8 file is accepted.
    loose = ["--int8-max-fidelity-drop", "1", "--int8-max-fid-ratio", "1e9"]
    result = CliRunner().invoke(app, [str(run), "--int8", "--int8-samples", SAMPLES, *loose])
    assert result.exit_code == 0, result.output
    fidelity = result.stdout.split("label fidelity ")[1].split()
    assert float(fidelity[0]) < float(fidelity[3]) - 0.2  # int8 vs fp32: the outlier's damage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8", "--fp16"], "does not combine with --fp16"),
        (["--judge", "JUDGE"], "needs --int8"),
        (["--int8", "--judge", "JUDGE"], "no such judge folder"),
        (["--int8", "--int8-max-fid-ratio", "0.9"], "--int8-max-fid-ratio >= 1"),
    ],
)
def test_int8_refusals_exit_2(digits_run, tmp_path, args, message) -> None:
    args = [str(tmp_path / "missing") if a == "JUDGE" else a for a in args]
    out = tmp_path / "export" / "decoder.onnx"
    result = CliRunner().invoke(app, [str(digits_run), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_vaegen_generate_runs_the_int8_decoder(int8_export, tmp_path) -> None:
    """A real `vaegen generate` job (its own local Ray) on the int8 file and on the fp32 one:
    the same spec gives the same labels, and images within a few levels."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    export, _ = int8_export
    images = {}
    for name in ("decoder.onnx", "decoder.int8.onnx"):
        out = tmp_path / name
        vaegen = Path(sys.executable).with_name("vaegen")
        cmd = [vaegen, "generate", export / name, "-n", "600", "--workers", "1", "--out", out]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["num_rows"] == 600
        table = pq.read_table([out / s["file"] for s in manifest["shards"]][0])
        images[name] = (table.column("label").to_numpy(), table.column("image").to_pylist())
    (labels_a, imgs_a), (labels_b, imgs_b) = images.values()
    assert np.array_equal(labels_a, labels_b)
    a = np.frombuffer(b"".join(imgs_a), np.uint8).astype(int)
    b = np.frombuffer(b"".join(imgs_b), np.uint8).astype(int)
    assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 2.0
