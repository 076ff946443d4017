"""judge.onnx without torch: its contract (names, metadata) and `JudgeSession`, which runs it.

Workers filter generated images with the judge, and workers never import torch, so this module
imports only numpy and (lazily, when a session is built) onnxruntime. `vaegen judge` writes the
file (eval/judge_export.py); its graph takes the decoder's uint8 `image` output as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from vaegen.errors import MissingDependency, VaegenError

JUDGE_ONNX_VERSION = "1"  # the graph contract below; bump if names, dtypes or meaning change
INPUT_IMAGE = "image"
OUTPUT_PROBS, OUTPUT_FEATURES = "probs", "features"
BATCH_AXIS = "batch"
JUDGE_METADATA_KEYS: tuple[str, ...] = (
    "vaegen_judge_version",
    "num_classes",
    "class_names",
    "image_shape",
    "test_accuracy",
    "dataset",
)
CPU_PROVIDERS = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class JudgeMetadata:
    """The typed metadata props of a judge.onnx."""

    version: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    test_accuracy: float
    dataset: str
    extra: dict[str, str]  # informative props beyond JUDGE_METADATA_KEYS


def parse_judge_metadata(props: dict[str, str], where: str = "judge") -> JudgeMetadata:
    """Validate raw (str -> str) props; VaegenError (exit 2) for a file that is not a judge."""
    missing = [k for k in JUDGE_METADATA_KEYS if k not in props]
    if missing:
        raise VaegenError(
            f"{where}: not a vaegen judge (metadata lacks {', '.join(missing)}); "
            "write one with `vaegen judge`"
        )
    if props["vaegen_judge_version"] != JUDGE_ONNX_VERSION:
        raise VaegenError(
            f"{where}: judge format {props['vaegen_judge_version']!r}, this vaegen reads "
            f"{JUDGE_ONNX_VERSION!r}; rewrite it with `vaegen judge`"
        )
    try:
        num_classes = int(props["num_classes"])
        names = json.loads(props["class_names"])
        shape = json.loads(props["image_shape"])
        accuracy = float(props["test_accuracy"])
    except (ValueError, TypeError):
        raise VaegenError(f"{where}: judge metadata is malformed") from None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise VaegenError(f"{where}: metadata class_names must be a JSON list of strings")
    if num_classes < 2 or len(names) != num_classes:
        raise VaegenError(f"{where}: {len(names)} class_names for num_classes={num_classes}")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise VaegenError(f"{where}: metadata image_shape must be a JSON list [C, H, W]")
    extra = {k: v for k, v in props.items() if k not in JUDGE_METADATA_KEYS}
    return JudgeMetadata(
        version=props["vaegen_judge_version"],
        num_classes=num_classes,
        class_names=tuple(names),
        image_shape=(shape[0], shape[1], shape[2]),
        test_accuracy=accuracy,
        dataset=props["dataset"],
        extra=extra,
    )


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependency(
            "the judge needs onnxruntime: pip install onnxruntime-gpu "
            "(or onnxruntime on a CPU-only machine)"
        ) from None
    return onnxruntime


def _check_signature(session: Any, meta: JudgeMetadata, where: str) -> int:
    """The I/O contract; returns the feature width F."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != {INPUT_IMAGE} or set(outputs) != {OUTPUT_PROBS, OUTPUT_FEATURES}:
        raise VaegenError(
            f"{where}: judge I/O is {sorted(inputs)} -> {sorted(outputs)}, expected "
            f"[{INPUT_IMAGE!r}] -> [{OUTPUT_FEATURES!r}, {OUTPUT_PROBS!r}]"
        )
    image, probs, feats = inputs[INPUT_IMAGE], outputs[OUTPUT_PROBS], outputs[OUTPUT_FEATURES]
    ok = (
        image.type == "tensor(uint8)"
        and list(image.shape[1:]) == list(meta.image_shape)
        and probs.type == "tensor(float)"
        and list(probs.shape[1:]) == [meta.num_classes]
        and feats.type == "tensor(float)"
        and len(feats.shape) == 2
        and isinstance(feats.shape[1], int)
    )
    if not ok:
        raise VaegenError(
            f"{where}: judge signature {image.type}{image.shape} -> {probs.type}{probs.shape}, "
            f"{feats.type}{feats.shape} breaks the contract for image shape "
            f"{list(meta.image_shape)} and {meta.num_classes} classes"
        )
    return int(feats.shape[1])


class JudgeSession:
    """A judge.onnx loaded once (one onnxruntime session); `predict` scores uint8 images.

    `model` is a path or the file's bytes (what a Ray actor receives). `threads` 0 lets
    onnxruntime choose; set it on shared machines, as the workers' sampler does.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: tuple[str, ...] = CPU_PROVIDERS,
        threads: int = 0,
    ) -> None:
        ort = _onnxruntime()
        where = "judge.onnx" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not os.path.isfile(model):
            raise VaegenError(f"{where}: no such judge file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(0, threads)
        opts.log_severity_level = 3
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
            raise VaegenError(f"{where}: onnxruntime cannot load it ({exc})") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.meta = parse_judge_metadata(props, where)
        self.feature_dim = _check_signature(self.session, self.meta, where)
        self.where = where

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, C, H, W] -> (probs float32 [B, num_classes], features float32 [B, F])."""
        shape = tuple(self.meta.image_shape)
        if not (
            isinstance(images, np.ndarray)
            and images.dtype == np.uint8
            and images.ndim == 4
            and images.shape[1:] == shape
        ):
            got = getattr(images, "dtype", type(images).__name__), getattr(images, "shape", "?")
            raise VaegenError(f"the judge takes uint8 [B, {', '.join(map(str, shape))}], got {got}")
        if len(images) == 0:
            k, f = self.meta.num_classes, self.feature_dim
            return np.zeros((0, k), np.float32), np.zeros((0, f), np.float32)
        probs, feats = self.session.run(
            [OUTPUT_PROBS, OUTPUT_FEATURES], {INPUT_IMAGE: np.ascontiguousarray(images)}
        )
        return probs, feats
