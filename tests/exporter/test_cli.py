"""`vaegen export` through CliRunner: output, exit codes, and what is left on disk."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import exporter.export
import exporter.graph
from exporter.cli import app
from exporter.parity import Tolerance
from trainer.checkpoint import save_model

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_cli_prints_figures(run_factory) -> None:
    run = run_factory(model="cvae", arch="mlp")
    result = _invoke(run)
    assert result.exit_code == 0, result.output
    assert "exported" in result.stdout and "decoder.onnx" in result.stdout
    assert "parity fp32 [CPUExecutionProvider] batch sizes 1,7,64,513" in result.stdout
    assert "max|dmean|" in result.stdout and "pixels off" in result.stdout
    assert (run / "export" / "decoder.onnx").is_file()


def test_cli_fp16_reports_its_tolerance(run_factory) -> None:
    run = run_factory(model="vae", arch="mlp", likelihood="gaussian")
    result = _invoke(run, "--fp16")
    assert result.exit_code == 0, result.output
    assert "parity fp16" in result.stdout
    assert "max|dmean| <= 0.01" in result.stdout and "max level diff <= 3" in result.stdout


class _Marker:
    """Unpickling this would create a file: proof of whether anything unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _corrupt_header(weights: Path) -> None:
    data = bytearray(weights.read_bytes())
    for i in range(8, 24):  # inside the JSON header
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))


def _truncate(weights: Path) -> None:
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def _bad_length(weights: Path) -> None:
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 4)
    weights.write_bytes(bytes(data))


def _mismatch_config(weights: Path) -> None:
    config = weights.parent / "config.json"
    raw = json.loads(config.read_text())
    raw["model"]["latent_dim"] += 1
    config.write_text(json.dumps(raw))


def _swap_weights(weights: Path) -> None:
    """Same shapes, other values: only the recorded sha256 can tell."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    save_file({k: v + 1.0 for k, v in state.items()}, str(weights))


def _missing_weights(weights: Path) -> None:
    weights.unlink()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_corrupt_header, "corrupt"),
        (_truncate, "truncated"),
        (_bad_length, "model.safetensors"),
        (_mismatch_config, "disagree"),
        (_swap_weights, "does not match config.json"),
        (_missing_weights, "missing"),
    ],
)
def test_bad_checkpoint_exits_2(run_factory, damage, needle) -> None:
    run = run_factory()
    damage(run / "model" / "model.safetensors")
    result = _invoke(run)
    _assert_one_line_error(result, 2, "error:", needle)
    assert not (run / "export").exists()


def test_pickle_is_refused_and_never_unpickled(run_factory, tmp_path) -> None:
    run = run_factory()
    marker = tmp_path / "unpickled.marker"
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(pickle.dumps(_Marker(marker)))
    pickle.loads(weights.read_bytes())  # the payload does work when unpickled...
    assert marker.exists()
    marker.unlink()
    result = _invoke(run)
    _assert_one_line_error(result, 2, "pickle")
    assert not marker.exists()  # ...and export never unpickled it
    # torch.save's zip format is refused the same way.
    torch.save({"x": torch.zeros(1)}, weights)
    _assert_one_line_error(_invoke(run), 2, "pickle")


def test_not_a_run_exits_2(tmp_path) -> None:
    _assert_one_line_error(_invoke(tmp_path / "nope"), 2, "not a vaegen run")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--fp16", "--optimize"), "does not combine"),
        (("--out", "decoder.txt"), ".onnx"),
        (("--out", "x.opt.onnx"), ".onnx"),
    ],
)
def test_bad_options_exit_2(run_factory, tmp_path, args, needle) -> None:
    run = run_factory()
    args = tuple(str(tmp_path / a) if a.endswith(("txt", "onnx")) else a for a in args)
    _assert_one_line_error(_invoke(run, *args), 2, needle)


def test_failed_parity_exits_1_and_leaves_nothing(run_factory, monkeypatch) -> None:
    run = run_factory(arch="conv")
    monkeypatch.setattr(exporter.export, "FP32_TOLERANCE", Tolerance(-1.0, -1.0, -1))
    line = _assert_one_line_error(_invoke(run), 1, "parity fp32", "FAILED", "nothing was written")
    assert "max|dmean|" in line
    assert not (run / "export").exists()  # nothing: not even the folder it made


def _inject(monkeypatch, mean_offset: float = 0.0, image_shift: int = 0) -> None:
    """A wrong graph: the exported mean or image no longer matches model.decode."""
    original = exporter.graph.DecoderForExport.forward

    def wrong(self, z, y=None):
        image, mean = original(self, z, y)
        return image + image_shift, mean + mean_offset

    monkeypatch.setattr(exporter.graph.DecoderForExport, "forward", wrong)


@pytest.mark.parametrize(("mean_offset", "image_shift"), [(1e-3, 0), (0.0, 1)])
def test_wrong_graph_exits_1(run_factory, monkeypatch, mean_offset, image_shift) -> None:
    run = run_factory()
    _inject(monkeypatch, mean_offset, image_shift)
    _assert_one_line_error(_invoke(run, "--optimize"), 1, "FAILED")
    assert not (run / "export").exists()  # nothing: not even the folder it made


def test_failed_optimized_parity_leaves_neither_file(run_factory, monkeypatch) -> None:
    run = run_factory()
    real = exporter.export.check_parity

    def strict_for_opt(model, path, tolerance, label="fp32", **kw):
        if label.endswith("-opt"):
            tolerance = Tolerance(-1.0, -1.0, -1)
        return real(model, path, tolerance, label=label, **kw)

    monkeypatch.setattr(exporter.export, "check_parity", strict_for_opt)
    _assert_one_line_error(_invoke(run, "--optimize"), 1, "fp32-opt", "FAILED")
    assert not (run / "export").exists()  # nothing: not even the folder it made


def test_nonfinite_weights_exit_2(run_factory) -> None:
    run = run_factory()
    from trainer.checkpoint import load_model

    model, info = load_model(run)
    with torch.no_grad():
        next(model.decoder.parameters()).fill_(float("nan"))
    save_model(run / "model", model, dataset=info.dataset, train={}, metrics={})
    _assert_one_line_error(_invoke(run), 2, "non-finite")
