"""File contracts shared by stages that must not import each other (DESIGN.md "Artifacts")."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

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


def parse_decoder_metadata(props: dict[str, str], where: str = "decoder") -> dict[str, Any]:
    """Typed, validated decoder metadata: ints as int, class_names/image_shape as lists.

    Raises VaegenError (exit 2) for a file that is not a vaegen decoder or whose props disagree.
    """
    from vaegen.errors import VaegenError

    missing = [k for k in DECODER_METADATA_KEYS if k not in props]
    if missing:
        raise VaegenError(
            f"{where}: not a vaegen decoder (metadata lacks {', '.join(missing)}); "
            "export it with `vaegen export`"
        )
    out: dict[str, Any] = dict(props)
    try:
        out["latent_dim"] = int(props["latent_dim"])
        out["num_classes"] = int(props["num_classes"])
    except ValueError:
        raise VaegenError(f"{where}: metadata latent_dim/num_classes are not integers") from None
    for key in ("class_names", "image_shape"):
        try:
            out[key] = json.loads(props[key])
        except (json.JSONDecodeError, TypeError):
            raise VaegenError(f"{where}: metadata {key!r} is not valid JSON") from None
    latent_dim, num_classes = out["latent_dim"], out["num_classes"]
    names, shape = out["class_names"], out["image_shape"]
    if latent_dim < 1 or num_classes < 0:
        raise VaegenError(f"{where}: metadata latent_dim must be >= 1 and num_classes >= 0")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise VaegenError(f"{where}: metadata class_names must be a JSON list of strings")
    if len(names) != num_classes:
        raise VaegenError(
            f"{where}: metadata has {len(names)} class_names for num_classes={num_classes}"
        )
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise VaegenError(f"{where}: metadata image_shape must be a JSON list [C, H, W]")
    return out


def load_onnx(path: str | os.PathLike[str], missing: str = "no such file"):  # noqa: ANN201
    """The ONNX model at `path` (onnx.ModelProto, no external data), or VaegenError (exit 2).

    `missing` words the error for an absent file, as each stage's users know it.
    """
    import onnx

    from vaegen.errors import VaegenError

    path = Path(path)
    if not path.is_file():
        raise VaegenError(f"{path}: {missing}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise VaegenError(f"{path}: not an ONNX model ({type(exc).__name__})") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks: how every artifact is identified
    (the weights in config.json, the decoder in its metadata and a dataset's manifest, shards).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def quantize(mean: np.ndarray) -> np.ndarray:
    """Decoder mean in [0, 1] -> uint8 pixels: 255 * mean, rounded half to even, clipped.

    The one definition of a vaegen pixel. decoder.onnx computes it in its graph
    (exporter.graph.quantize: Mul, Round, Clip, Cast, the same function written in torch ops,
    since ONNX export traces torch); eval uses this for images it decodes itself. Rounding and
    clipping to the integers 0 and 255 commute, so either order gives the same bytes.
    """
    import numpy as np

    return np.clip(np.rint(mean * 255.0), 0.0, 255.0).astype(np.uint8)
