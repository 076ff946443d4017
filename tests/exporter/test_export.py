"""export_decoder end to end: every model cell exports and passes parity; the file's contract."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporter.export import export_decoder
from exporter.metadata import read_metadata
from exporter.parity import FP16_TOLERANCE, FP32_TOLERANCE
from trainer.checkpoint import sha256_file
from vaegen.contracts import DECODER_METADATA_KEYS as REQUIRED_KEYS

CELLS = [
    (model, arch, likelihood)
    for model in ("vae", "cvae")
    for arch in ("mlp", "conv")
    for likelihood in ("bernoulli", "gaussian")
]
SHAPES = {"mlp": (3, 12, 12), "conv": (1, 7, 9)}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("model", "arch", "likelihood"), CELLS)
def test_every_cell_exports_with_parity(run_factory, model, arch, likelihood) -> None:
    shape = SHAPES[arch] if likelihood == "gaussian" else (1, 8, 8)
    run = run_factory(model=model, arch=arch, likelihood=likelihood, image_shape=shape)
    result = export_decoder(run)
    assert result.path == run / "export" / "decoder.onnx"
    assert result.path.is_file() and result.optimized_path is None
    (report,) = result.parity
    assert report.passed and report.tolerance == FP32_TOLERANCE
    assert report.max_mean_diff <= 1e-5 and report.max_level_diff <= 1
    assert 1 in report.batch_sizes and max(report.batch_sizes) >= 513
    assert report.pixels == sum(report.batch_sizes) * int(np.prod(shape))
    meta = read_metadata(result.path)
    assert meta["num_classes"] == (4 if model == "cvae" else 0)
    assert meta["likelihood"] == likelihood and meta["image_shape"] == list(shape)
    session = _session(result.path)
    names = [i.name for i in session.get_inputs()]
    assert names == (["z", "y"] if model == "cvae" else ["z"])
    assert [o.name for o in session.get_outputs()] == ["image", "mean"]
    # Only the files we promised: no temp files, nothing inside RUN/model.
    assert sorted(p.name for p in (run / "export").iterdir()) == ["decoder.onnx"]
    assert sorted(p.name for p in (run / "model").iterdir()) == ["config.json", "model.safetensors"]


def test_metadata_props(cvae_conv_export) -> None:
    run, result = cvae_conv_export
    proto = onnx.load(str(result.path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert set(REQUIRED_KEYS) <= set(props)
    assert props["latent_dim"] == "5" and props["num_classes"] == "5"
    assert json.loads(props["class_names"]) == [f"class-{i}" for i in range(5)]
    assert json.loads(props["image_shape"]) == [1, 7, 9]
    assert props["likelihood"] == "bernoulli" and props["vaegen_version"] == "0.1.0"
    assert props["source_sha256"] == sha256_file(run / "model" / "model.safetensors")
    assert props["precision"] == "fp32"
    assert read_metadata(result.path)["class_names"] == [f"class-{i}" for i in range(5)]


def test_signature_and_graph(cvae_conv_export) -> None:
    _, result = cvae_conv_export
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    z, y = proto.graph.input
    image, mean = proto.graph.output
    assert z.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert y.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert mean.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for value in (z, y, image, mean):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = [n.op_type for n in proto.graph.node]
    # The one-hot is a Gather inside the graph; quantization is Round -> Clip -> Cast at the end.
    assert "Gather" in ops and "OneHot" not in ops
    assert ops[-4:] == ["Mul", "Round", "Clip", "Cast"]
    # No encoder weights in the file.
    assert not any("encoder" in t.name for t in proto.graph.initializer)
    mode = stat.S_IMODE(result.path.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IRGRP


def test_batch_size_invariance(cvae_conv_export) -> None:
    _, result = cvae_conv_export
    session = _session(result.path)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((513, 5), dtype=np.float32)
    y = (np.arange(513) % 5).astype(np.int64)
    image_all, mean_all = session.run(None, {"z": z, "y": y})
    for row in (0, 1, 256, 512):
        image, mean = session.run(None, {"z": z[row : row + 1], "y": y[row : row + 1]})
        np.testing.assert_array_equal(image[0], image_all[row])
        np.testing.assert_allclose(mean[0], mean_all[row], atol=1e-6, rtol=0)
    image7, _ = session.run(None, {"z": z[:7], "y": y[:7]})
    np.testing.assert_array_equal(image7, image_all[:7])
    # The quantization is what the contract says: round(mean * 255), clipped.
    expected = np.clip(np.rint(mean_all.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    assert np.count_nonzero(expected != image_all) <= image_all.size * 1e-4
    assert image_all.min() < 64 and image_all.max() > 192  # a spread, not all mid-grey


def test_label_changes_the_image(cvae_conv_export) -> None:
    _, result = cvae_conv_export
    session = _session(result.path)
    z = np.repeat(np.random.default_rng(2).standard_normal((1, 5), dtype=np.float32), 5, axis=0)
    image, _ = session.run(None, {"z": z, "y": np.arange(5, dtype=np.int64)})
    for a in range(5):
        for b in range(a + 1, 5):
            assert np.any(image[a] != image[b]), (a, b)


def test_accepts_model_dir_and_out(run_factory, tmp_path) -> None:
    run = run_factory(model="vae")
    out = tmp_path / "elsewhere" / "vae.onnx"
    result = export_decoder(run / "model", out=out)
    assert result.path == out and out.is_file()
    assert not (run / "export").exists()
    meta = read_metadata(out)
    assert meta["num_classes"] == 0 and meta["class_names"] == []
    assert [i.name for i in _session(out).get_inputs()] == ["z"]


def test_fp16_keeps_the_io_contract(run_factory) -> None:
    run = run_factory(arch="conv")
    result = export_decoder(run, out=run / "export" / "decoder16.onnx", fp16=True)
    (report,) = result.parity
    assert report.label == "fp16" and report.tolerance == FP16_TOLERANCE and report.passed
    proto = onnx.load(str(result.path))
    assert {t.data_type for t in proto.graph.initializer if t.name.startswith("decoder.")} == {
        onnx.TensorProto.FLOAT16
    }
    elem = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    assert elem == {
        "z": onnx.TensorProto.FLOAT,
        "y": onnx.TensorProto.INT64,
        "image": onnx.TensorProto.UINT8,
        "mean": onnx.TensorProto.FLOAT,
    }
    assert read_metadata(result.path)["precision"] == "fp16"


def test_optimize_writes_a_checked_copy(run_factory) -> None:
    run = run_factory(arch="mlp")
    result = export_decoder(run, optimize=True)
    opt = run / "export" / "decoder.opt.onnx"
    assert result.optimized_path == opt and opt.is_file()
    assert [r.label for r in result.parity] == ["fp32", "fp32-opt"]
    assert all(r.passed for r in result.parity)
    assert read_metadata(opt) == read_metadata(result.path)
    assert sorted(p.name for p in opt.parent.iterdir()) == ["decoder.onnx", "decoder.opt.onnx"]
