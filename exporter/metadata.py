"""decoder.onnx metadata props: written by the exporter, read by anyone holding the file.

Values are strings (ONNX metadata is str -> str): integers in decimal, lists as JSON. The keys
and their parser live in vaegen.contracts, which the workers read them with; `read_metadata`
(the exporter's check of its optimized copy, and the tests) needs only the onnx package.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vaegen.contracts import load_onnx, parse_decoder_metadata
from vaegen.errors import VaegenError


def build_metadata(
    cfg: Any,
    class_names: list[str],
    source_sha256: str,
    vaegen_version: str,
    precision: str,
    dataset: str = "",
) -> dict[str, str]:
    """The props for a model config. A plain VAE gets num_classes 0 and no class names.

    Beyond DESIGN.md's keys (vaegen.contracts.DECODER_METADATA_KEYS), model, arch, precision
    and dataset are informative only: readers must not require them.
    """
    num_classes = cfg.num_classes if cfg.conditional else 0
    names = list(class_names) if cfg.conditional else []
    if cfg.conditional and not names:
        names = [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise VaegenError(
            f"config.json lists {len(names)} class names for a model of {num_classes} classes"
        )
    return {
        "vaegen_version": vaegen_version,
        "latent_dim": str(int(cfg.latent_dim)),
        "num_classes": str(int(num_classes)),
        "class_names": json.dumps([str(n) for n in names]),
        "image_shape": json.dumps([int(d) for d in cfg.image_shape]),
        "likelihood": str(cfg.likelihood),
        "source_sha256": source_sha256,
        "model": str(cfg.model),
        "arch": str(cfg.arch),
        "precision": precision,
        "dataset": dataset,
    }


def attach_metadata(proto: Any, props: dict[str, str]) -> None:
    """Replace the model's metadata props with `props` (in a stable order)."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The typed metadata of a vaegen decoder.onnx (or decoder.opt.onnx), or VaegenError.

    Keys: vaegen_version (str), latent_dim (int), num_classes (int, 0 for a plain VAE),
    class_names (list[str]), image_shape ([C, H, W]), likelihood (str), source_sha256 (str),
    plus the informative model, arch, precision and dataset (str) when present.
    """
    from exporter._deps import require

    require("onnx")  # an install hint, not a traceback, if it is missing
    proto = load_onnx(path)
    props = {p.key: p.value for p in proto.metadata_props}
    return parse_decoder_metadata(props, where=str(path))
