"""Read and validate a vaegen decoder.onnx (metadata and input/output signature).

This parses the ONNX protobuf only; no onnxruntime session is built, so the CLI can reject a bad
file in milliseconds and before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vaegen.contracts import load_onnx, parse_decoder_metadata, sha256_file
from vaegen.errors import VaegenError


@dataclass(frozen=True)
class DecoderInfo:
    """What the generator needs to know about a decoder, taken from its metadata."""

    path: str
    sha256: str
    latent_dim: int
    num_classes: int  # 0: a plain VAE, no `y` input and no labels
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    likelihood: str
    vaegen_version: str
    source_sha256: str
    precision: str = "unknown"  # the exporter's `precision` prop (fp32, fp16, int8), if any
    quantization: str = ""  # the int8 scheme (`quantization` prop), e.g. dynamic-per-channel
    op_types: tuple[str, ...] = ()  # the graph's operators (sorted): what a provider must run

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256,
            "latent_dim": self.latent_dim,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            "likelihood": self.likelihood,
            "vaegen_version": self.vaegen_version,
            "source_sha256": self.source_sha256,
            "precision": self.precision,
            **({"quantization": self.quantization} if self.quantization else {}),
        }


def _dims(value_info) -> list[int | str | None]:  # noqa: ANN001 - onnx.ValueInfoProto
    shape = value_info.type.tensor_type.shape
    out: list[int | str | None] = []
    for dim in shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def read_decoder(path: str | os.PathLike[str]) -> DecoderInfo:
    """Validate `path` as a vaegen decoder and return its metadata, or raise VaegenError."""
    from onnx import TensorProto

    path = Path(path)
    where = str(path)
    model = load_onnx(path, missing="no such model file")
    if len(model.graph.node) == 0:
        raise VaegenError(f"{where}: not an ONNX model (empty graph)")
    meta = parse_decoder_metadata({p.key: p.value for p in model.metadata_props}, where)
    latent_dim, num_classes = meta["latent_dim"], meta["num_classes"]
    class_names, image_shape = meta["class_names"], meta["image_shape"]

    # The signature: initializers may be listed as graph inputs in old opsets; skip them.
    init_names = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in init_names}
    outputs = {o.name: o for o in model.graph.output}
    z = inputs.get("z")
    if z is None or z.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise VaegenError(f"{where}: decoder needs a float32 input 'z' [B, latent_dim]")
    zdims = _dims(z)
    if len(zdims) != 2 or (isinstance(zdims[1], int) and zdims[1] != latent_dim):
        raise VaegenError(f"{where}: input 'z' must have shape [B, {latent_dim}], has {zdims}")
    if isinstance(zdims[0], int) and zdims[0] != -1:
        raise VaegenError(f"{where}: input 'z' needs a dynamic batch axis, has {zdims}")
    expected_inputs = {"z", "y"} if num_classes > 0 else {"z"}
    if set(inputs) != expected_inputs:
        raise VaegenError(
            f"{where}: decoder inputs are {sorted(inputs)}, expected {sorted(expected_inputs)} "
            f"for num_classes={num_classes}"
        )
    if num_classes > 0:
        y = inputs["y"]
        if y.type.tensor_type.elem_type != TensorProto.INT64 or len(_dims(y)) != 1:
            raise VaegenError(f"{where}: input 'y' must be int64 [B]")
    image = outputs.get("image")
    if image is None or image.type.tensor_type.elem_type != TensorProto.UINT8:
        raise VaegenError(f"{where}: decoder needs a uint8 output 'image' [B, C, H, W]")
    idims = _dims(image)
    if len(idims) != 4 or any(
        isinstance(got, int) and got != want
        for got, want in zip(idims[1:], image_shape, strict=True)
    ):
        raise VaegenError(
            f"{where}: output 'image' has shape {idims}, metadata image_shape is {image_shape}"
        )
    return DecoderInfo(
        path=str(path.resolve()),
        sha256=sha256_file(path),
        latent_dim=latent_dim,
        num_classes=num_classes,
        class_names=tuple(class_names),
        image_shape=(int(image_shape[0]), int(image_shape[1]), int(image_shape[2])),
        likelihood=meta["likelihood"],
        vaegen_version=meta["vaegen_version"],
        source_sha256=meta["source_sha256"],
        precision=str(meta.get("precision") or "unknown"),  # DESIGN.md does not require it
        quantization=str(meta.get("quantization") or ""),
        op_types=tuple(sorted({node.op_type for node in model.graph.node})),
    )
