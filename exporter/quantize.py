"""An int8 copy of a verified decoder.onnx, by onnxruntime's quantization tools.

Two schemes, both int8 weights (signed) and uint8 activations, the fast pair on x86 with VNNI:
- dynamic: MatMulInteger/ConvInteger; each activation's range is measured per call
  (DynamicQuantizeLinear), so nothing is calibrated;
- static: QDQ with activation ranges calibrated on prior samples (z ~ N(0, I), classes
  balanced), exactly the inputs that generation feeds the decoder.
Only the layers' weights are quantized (MatMul/Gemm, Conv): the one-hot Gather, the sigmoid and
the pixel quantization stay float. DEFAULT_SCHEME is chosen by measurement (exporter/README.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter._deps import require
from exporter.graph import INPUT_Y, INPUT_Z, check_graph
from exporter.metadata import attach_metadata
from vaegen.errors import InternalFailure, VaegenError

INT8_SUFFIX = ".int8.onnx"
MODES = ("dynamic", "static")
_OPS = ["MatMul", "Gemm", "Conv"]
_CALIBRATION_SEED = 0


@dataclass(frozen=True)
class QuantScheme:
    """How the int8 decoder is made; `name` is stored as the `quantization` metadata prop."""

    mode: str = "dynamic"
    per_channel: bool = True
    calibration_samples: int = 2048  # static only
    calibration_batch: int = 256

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise VaegenError(f"quantization mode must be one of {MODES}, got {self.mode!r}")
        if self.calibration_samples < 1 or self.calibration_batch < 1:
            raise VaegenError("calibration samples and batch must be >= 1")

    @property
    def name(self) -> str:
        kind = "qdq" if self.mode == "static" else "dynamic"
        return f"{kind}-{'per-channel' if self.per_channel else 'per-tensor'}"


DEFAULT_SCHEME = QuantScheme()


def int8_path_for(out: Path) -> Path:
    """decoder.onnx -> decoder.int8.onnx"""
    return out.with_name(out.name[: -len(".onnx")] + INT8_SUFFIX)


class PriorReader:
    """Calibration batches for quantize_static: z ~ N(0, I), y cycling through every class."""

    def __init__(self, latent_dim: int, num_classes: int, scheme: QuantScheme) -> None:
        self._batches = self._make(latent_dim, num_classes, scheme)

    @staticmethod
    def _make(latent_dim: int, num_classes: int, scheme: QuantScheme) -> Iterator[dict]:
        rng = np.random.default_rng(_CALIBRATION_SEED)
        for start in range(0, scheme.calibration_samples, scheme.calibration_batch):
            rows = min(scheme.calibration_batch, scheme.calibration_samples - start)
            feed = {INPUT_Z: rng.standard_normal((rows, latent_dim), dtype=np.float32)}
            if num_classes:
                feed[INPUT_Y] = (np.arange(start, start + rows) % num_classes).astype(np.int64)
            yield feed

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def _quantize(src: Path, dst: Path, scheme: QuantScheme, latent_dim: int, classes: int) -> None:
    q = require("onnxruntime.quantization")
    common: dict[str, Any] = {
        "op_types_to_quantize": _OPS,
        "per_channel": scheme.per_channel,
        "weight_type": q.QuantType.QInt8,
    }
    if scheme.mode == "dynamic":
        q.quantize_dynamic(str(src), str(dst), **common)
        return
    q.quantize_static(
        str(src),
        str(dst),
        PriorReader(latent_dim, classes, scheme),
        quant_format=q.QuantFormat.QDQ,
        activation_type=q.QuantType.QUInt8,
        **common,
    )


def save_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    props: dict[str, str],
    scheme: QuantScheme = DEFAULT_SCHEME,
) -> dict[str, str]:
    """Quantize the verified fp32 decoder `src` into `dst`, with `props` as its metadata plus
    `precision` int8 and `quantization` (scheme.name); returns those props. The file passes the
    same graph checks as every export; its outputs are judged by exporter.int8_check."""
    onnx = require("onnx")
    latent_dim = int(props["latent_dim"])
    classes = int(props["num_classes"])
    # The quantizer logs a "consider pre-processing" warning per call; our graph needs none.
    quant_log = logging.getLogger()
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        _quantize(Path(src), Path(dst), scheme, latent_dim, classes)
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many unrelated types
        raise InternalFailure(f"onnxruntime could not quantize the decoder: {exc}") from exc
    finally:
        quant_log.setLevel(level)
    proto = onnx.load(str(dst))
    int8_props = {**props, "precision": "int8", "quantization": scheme.name}
    attach_metadata(proto, int8_props)  # also drops the quantizer's own "onnx.infer" note
    onnx.save(proto, str(dst))
    check_graph(dst, "int8")
    return int8_props
