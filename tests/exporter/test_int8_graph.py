"""Clean graphs: every exported file passes the full checker and strict shape inference, holds
no value_info for initializers, and onnxruntime's quantizer accepts decoder.onnx as exported."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnxruntime.quantization import quantize_dynamic

from exporter.export import export_decoder
from exporter.graph import check_graph
from vaegen.errors import InternalFailure


def _strict(path: Path) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    return proto


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_exported_files_are_clean_and_quantizable(run_factory, tmp_path: Path, arch) -> None:
    run = run_factory(arch=arch, image_shape=(1, 8, 8))
    result = export_decoder(run, optimize=True)
    fp16 = export_decoder(run, out=tmp_path / "half.onnx", fp16=True)
    for path in (result.path, result.optimized_path, fp16.path):
        proto = _strict(path)
        weights = {t.name for t in proto.graph.initializer}
        assert weights and not weights & {v.name for v in proto.graph.value_info}
        # Intermediate shapes are kept, with the symbolic batch axis.
        assert any(
            d.dim_param == "batch"
            for v in proto.graph.value_info
            for d in v.type.tensor_type.shape.dim
        )
    # The file as exported, no preprocessing: Gemm(transB=1) becomes MatMul with the weight
    # transposed in place, which stale value_info used to stop.
    quantize_dynamic(str(result.path), str(tmp_path / "q.onnx"))
    _strict(tmp_path / "q.onnx")


def test_check_graph_refuses_value_info_for_an_initializer(cvae_conv_export, tmp_path) -> None:
    _, result = cvae_conv_export
    proto = onnx.load(str(result.path))
    weight = proto.graph.initializer[0]
    proto.graph.value_info.append(
        onnx.helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims))
    )
    onnx.save(proto, str(tmp_path / "stale.onnx"))
    with pytest.raises(InternalFailure, match="value_info for initializers"):
        check_graph(tmp_path / "stale.onnx", "fp32")
    # A shape that contradicts the weight fails strict shape inference.
    proto.graph.value_info[-1].type.tensor_type.shape.dim[0].dim_value += 1
    onnx.save(proto, str(tmp_path / "wrong.onnx"))
    with pytest.raises(InternalFailure, match="ONNX checker"):
        check_graph(tmp_path / "wrong.onnx", "fp32")
