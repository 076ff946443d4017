"""int8 decoders (`vaegen export --int8`): the manifest records the precision; CPU actors run
them, GPU actors refuse them before anything starts (no CUDA kernel for their int8 ops)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vaegen.dataset_reader import open_dataset, read_rows
from vaegen.errors import VaegenError
from workers.cli import app
from workers.decoder_meta import read_decoder
from workers.job import run_generation
from workers.options import GenerateOptions
from workers.spec import build_spec


@pytest.fixture(scope="module")
def int8_onnx(cvae_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test decoder through onnxruntime's dynamic quantizer, as the exporter makes one."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp_path_factory.mktemp("int8") / "decoder.int8.onnx"
    quantize_dynamic(str(cvae_onnx), str(path), per_channel=True, weight_type=QuantType.QInt8)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in onnx.load(str(cvae_onnx)).metadata_props}
    del model.metadata_props[:]
    helper.set_model_props(
        model, {**props, "precision": "int8", "quantization": "dynamic-per-channel"}
    )
    onnx.save(model, str(path))
    return path


def test_reads_precision_and_operators(int8_onnx: Path, cvae_onnx: Path) -> None:
    info = read_decoder(int8_onnx)
    assert (info.precision, info.quantization) == ("int8", "dynamic-per-channel")
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(info.op_types)
    plain = read_decoder(cvae_onnx)  # the test decoder has no `precision` prop
    assert plain.precision == "unknown" and "MatMulInteger" not in plain.op_types
    assert plain.to_json()["precision"] == "unknown" and "quantization" not in plain.to_json()


def test_cpu_actors_run_int8_and_the_manifest_says_so(
    local_ray,  # noqa: ANN001 - fixture
    int8_onnx: Path,
    cvae_onnx: Path,
    tmp_path: Path,
) -> None:
    spec = build_spec(str(int8_onnx), 200, shard_size=64, seed=1)
    manifest = run_generation(spec, tmp_path / "int8", GenerateOptions(show_progress=False))
    assert manifest["model"]["precision"] == "int8"
    assert manifest["model"]["quantization"] == "dynamic-per-channel"
    assert (
        json.loads((tmp_path / "int8" / "manifest.json").read_text())["model"] == manifest["model"]
    )
    fp32 = build_spec(str(cvae_onnx), 200, shard_size=64, seed=1)
    run_generation(fp32, tmp_path / "fp32", GenerateOptions(show_progress=False))
    a, b = (read_rows(open_dataset(tmp_path / d)) for d in ("int8", "fp32"))
    assert np.array_equal(a.labels, b.labels)  # same spec, same labels; pixels near fp32's
    diff = np.abs(a.images.astype(int) - b.images.astype(int))
    assert 0 < diff.mean() < 3


def test_gpu_actors_refuse_int8_before_anything_runs(int8_onnx: Path, tmp_path: Path) -> None:
    spec = build_spec(str(int8_onnx), 10)
    with pytest.raises(VaegenError, match="DynamicQuantizeLinear, MatMulInteger, which"):
        run_generation(spec, tmp_path / "ds", GenerateOptions(gpus_per_worker=1))
    result = CliRunner().invoke(
        app, [str(int8_onnx), "-n", "10", "--gpus-per-worker", "1", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "int8 runs on CPU actors" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists() and not (tmp_path / "x").exists()
