"""An onnxruntime graph-optimized copy of a decoder, for CPU inference.

ORT_ENABLE_EXTENDED adds fusions (e.g. Gemm+Relu into com.microsoft FusedGemm) but not
ORT_ENABLE_ALL's layout transforms (NCHWc), which tie the file to this CPU's vector width.
The saved file still needs onnxruntime's CPU provider (contrib ops), so it sits beside the
portable decoder.onnx and never replaces it.
"""

from __future__ import annotations

import os

from exporter._deps import require
from vaegen.errors import InternalFailure


def save_optimized(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Let onnxruntime optimize `src` for its CPU provider and write the result to `dst`."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
        raise InternalFailure(f"onnxruntime could not optimize the export: {exc}") from exc
