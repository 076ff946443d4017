"""The exported function (z, y) -> (image, mean), its torch -> ONNX export, and its signature.

We use the torch.export-based ("dynamo") exporter: in torch 2.14 the TorchScript exporter still
exists but is deprecated, and for these decoders it emits ~2.5x more nodes (Shape/Slice/Mod chains
for Unflatten). The dynamo graph after its onnxscript pass is the plain op list, e.g. for the MLP:
Gather, Concat, Gemm, Relu, ..., Reshape, Sigmoid, Mul, Round, Clip, Cast.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exporter._deps import require
from vaegen.errors import InternalFailure

OPSET = 18
INPUT_Z, INPUT_Y = "z", "y"
OUTPUT_IMAGE, OUTPUT_MEAN = "image", "mean"
BATCH_AXIS = "batch"
# The torch.export trace batch; > 1 so the batch axis is not specialised to a constant.
_TRACE_BATCH = 3


def quantize(mean: torch.Tensor) -> torch.Tensor:
    """uint8 pixels: round half to even (as ONNX Round), clip, then cast.

    vaegen.contracts.quantize defines the pixel; this is the same function in torch ops, since
    the export traces torch into the graph (numpy code cannot be traced).
    """
    return torch.clamp(torch.round(mean * 255.0), 0.0, 255.0).to(torch.uint8)


class DecoderForExport(nn.Module):
    """What decoder.onnx computes: mean = model.decode(z, y) and image = quantize(mean).

    It holds only the decoder and the one-hot table (no encoder weights end up in the file), and
    looks the one-hot up with `F.embedding`, which exports as a single Gather. With `fp16` the
    decoder body runs in float16, while the I/O stays float32 and the sigmoid and quantization
    run in float32 so rounding to pixel levels adds no fp16 error.
    """

    def __init__(self, model: Any, fp16: bool = False) -> None:
        super().__init__()
        self.dtype = torch.float16 if fp16 else torch.float32
        self.conditional = bool(model.cfg.conditional)
        self.decoder = copy.deepcopy(model.decoder).to(self.dtype).eval()
        self.register_buffer("eye", model.eye.detach().clone().to(self.dtype), persistent=False)

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.embedding(y, self.eye) if self.conditional else None
        logits = self.decoder(z.to(self.dtype), onehot)
        mean = torch.sigmoid(logits.float())
        return quantize(mean), mean


def export_onnx(model: Any, fp16: bool = False) -> Any:
    """Trace the model's decoder to an onnx.ModelProto with a dynamic batch axis."""
    require("onnx")
    require("onnxscript")
    cfg = model.cfg
    wrapper = DecoderForExport(model, fp16=fp16).eval()
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    args: tuple[torch.Tensor, ...] = (torch.zeros(_TRACE_BATCH, cfg.latent_dim),)
    dynamic: dict[str, Any] = {"z": {0: batch}}
    inputs = [INPUT_Z]
    if cfg.conditional:
        args += (torch.zeros(_TRACE_BATCH, dtype=torch.int64),)
        dynamic["y"] = {0: batch}
        inputs.append(INPUT_Y)
    return trace_to_onnx(wrapper, args, inputs, [OUTPUT_IMAGE, OUTPUT_MEAN], dynamic)


def trace_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, Any],
) -> Any:
    """torch.export-based export at OPSET, without the exporter's provenance props; any failure
    is ours (InternalFailure). Shared by the decoder and the judge (eval/judge_export.py)."""
    # The exporter is chatty (deprecation notes, a progress line per pass); keep the CLI quiet.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                args,
                None,
                dynamo=True,
                opset_version=OPSET,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
            raise InternalFailure(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    proto = program.model_proto
    _strip_trace_metadata(proto)
    drop_initializer_value_info(proto)
    return proto


def drop_initializer_value_info(proto: Any) -> None:
    """Drop value_info entries that describe initializers (the exporter writes one per weight).

    An initializer carries its own shape, so such an entry only repeats it, until a tool rewrites
    the weight under the same name: onnxruntime's quantizer turns Gemm(transB=1) into MatMul
    with the weight transposed in place, and onnx shape inference then stops on the stale entry
    ("Inferred shape and existing shape differ in dimension 0"). The entries of intermediate
    values stay: they keep the symbolic `batch` axis that re-inference would lose at Reshape.
    """
    names = {t.name for t in proto.graph.initializer}
    keep = [v for v in proto.graph.value_info if v.name not in names]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)


def check_graph(path: str | os.PathLike[str], label: str) -> None:
    """The file passes onnx's full checker and strict shape inference, and holds no value_info
    for an initializer (see drop_initializer_value_info); InternalFailure otherwise."""
    onnx = require("onnx")
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InternalFailure(f"the {label} export fails the ONNX checker: {exc}") from exc
    names = {t.name for t in proto.graph.initializer}
    stale = sorted(v.name for v in proto.graph.value_info if v.name in names)
    if stale:
        raise InternalFailure(f"the {label} export has value_info for initializers: {stale[:3]}")


def _strip_trace_metadata(proto: Any) -> None:
    """Drop the exporter's per-node/per-value provenance props: they are debug noise in a
    shipped artifact and bloat it. The model-level metadata is ours (see metadata.py)."""
    for node in proto.graph.node:
        del node.metadata_props[:]
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del value.metadata_props[:]
    for tensor in proto.graph.initializer:
        del tensor.metadata_props[:]
    del proto.metadata_props[:]


def _dims(value_info: Any) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in value_info.type.tensor_type.shape.dim
    ]


def check_signature(proto: Any, cfg: Any) -> None:
    """The I/O contract of DESIGN.md; any deviation is our bug (InternalFailure)."""
    from onnx import TensorProto

    init = {t.name for t in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in init}
    outputs = {o.name: o for o in proto.graph.output}
    shape = list(cfg.image_shape)
    want_in: dict[str, tuple[int, list[int | str]]] = {
        INPUT_Z: (TensorProto.FLOAT, [BATCH_AXIS, cfg.latent_dim])
    }
    if cfg.conditional:
        want_in[INPUT_Y] = (TensorProto.INT64, [BATCH_AXIS])
    want_out = {
        OUTPUT_IMAGE: (TensorProto.UINT8, [BATCH_AXIS, *shape]),
        OUTPUT_MEAN: (TensorProto.FLOAT, [BATCH_AXIS, *shape]),
    }
    for kind, got, want in (("input", inputs, want_in), ("output", outputs, want_out)):
        if set(got) != set(want):
            raise InternalFailure(f"exported {kind}s are {sorted(got)}, expected {sorted(want)}")
        for name, (elem, dims) in want.items():
            have = (got[name].type.tensor_type.elem_type, _dims(got[name]))
            if have != (elem, dims):
                want_desc = (elem, dims)
                raise InternalFailure(f"exported {kind} {name!r} is {have}, expected {want_desc}")
