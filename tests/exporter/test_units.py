"""Small pieces: metadata round trip and validation, signature check, parity inputs, deps."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest

import exporter._deps
from exporter.graph import check_signature, export_onnx
from exporter.metadata import attach_metadata, build_metadata, read_metadata
from exporter.parity import ParityReport, Tolerance, parity_inputs
from trainer.config import ModelConfig
from trainer.models import build_model
from vaegen.contracts import parse_decoder_metadata as parse_metadata
from vaegen.errors import InternalFailure, MissingDependency, VaegenError


def test_metadata_round_trip(tmp_path) -> None:
    cfg = ModelConfig(model="cvae", num_classes=3, image_shape=(1, 8, 8), hidden_dims=(8,))
    props = build_metadata(cfg, ["a", "b", "c"], "ab" * 32, "9.9", "fp32", "digits")
    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    attach_metadata(proto, props)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["num_classes"] == 3 and meta["class_names"] == ["a", "b", "c"]
    assert meta["image_shape"] == [1, 8, 8] and meta["source_sha256"] == "ab" * 32


def test_metadata_defaults_and_mismatch() -> None:
    cvae = ModelConfig(model="cvae", num_classes=3, hidden_dims=(8,))
    assert parse_metadata(build_metadata(cvae, [], "x", "v", "fp32"))["class_names"] == [
        "0",
        "1",
        "2",
    ]
    with pytest.raises(VaegenError, match="3 classes"):
        build_metadata(cvae, ["a", "b"], "x", "v", "fp32")
    vae = ModelConfig(model="vae", num_classes=10, hidden_dims=(8,))
    meta = parse_metadata(build_metadata(vae, ["a"] * 10, "x", "v", "fp32"))
    assert meta["num_classes"] == 0 and meta["class_names"] == []


def test_read_metadata_refuses_foreign_files(tmp_path) -> None:
    plain = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(plain))
    with pytest.raises(VaegenError, match="not a vaegen decoder"):
        read_metadata(plain)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(VaegenError, match="not an ONNX model"):
        read_metadata(junk)
    with pytest.raises(VaegenError, match="no such file"):
        read_metadata(tmp_path / "missing.onnx")


def test_signature_check_catches_a_wrong_graph() -> None:
    cvae = ModelConfig(model="cvae", num_classes=3, image_shape=(1, 4, 4), hidden_dims=(8,))
    proto = export_onnx(build_model(cvae).eval())
    check_signature(proto, cvae)
    with pytest.raises(InternalFailure, match="inputs"):
        check_signature(proto, ModelConfig(model="vae", image_shape=(1, 4, 4), hidden_dims=(8,)))
    other = ModelConfig(model="cvae", num_classes=3, image_shape=(1, 4, 5), hidden_dims=(8,))
    with pytest.raises(InternalFailure, match="image"):
        check_signature(proto, other)


def test_parity_inputs_cover_every_class() -> None:
    z, y = parity_inputs(4, 600, (1, 7))
    assert z.shape == (600, 4) and z.dtype == np.float32
    assert set(y.tolist()) == set(range(600))
    z2, _ = parity_inputs(4, 600, (1, 7))
    np.testing.assert_array_equal(z, z2)  # fixed, not re-drawn


def test_parity_nan_fails() -> None:
    tol = Tolerance(1e-5, 1e-4, 1)
    report = ParityReport("fp32", "cpu", (1,), float("nan"), 10, 0, 0, tol)
    assert not report.passed
    assert ParityReport("fp32", "cpu", (1,), 0.0, 10_000, 1, 1, tol).passed
    assert not ParityReport("fp32", "cpu", (1,), 0.0, 10_000, 2, 1, tol).passed
    assert not ParityReport("fp32", "cpu", (1,), 0.0, 10_000, 1, 2, tol).passed


def test_missing_dependency_hint(monkeypatch) -> None:
    real = importlib.import_module

    def fake(name, *args):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(exporter._deps.importlib, "import_module", fake)
    with pytest.raises(MissingDependency, match="pip install onnxruntime"):
        exporter._deps.require("onnxruntime")
