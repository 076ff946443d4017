"""File contracts shared by stages that must not import each other (DESIGN.md "Artifacts")."""

from __future__ import annotations

# decoder.onnx metadata_props: the exporter writes them, the workers and eval read them.
DECODER_METADATA_KEYS: tuple[str, ...] = (
    "vaegen_version",
    "latent_dim",
    "num_classes",
    "class_names",
    "image_shape",
    "likelihood",
    "source_sha256",
)
