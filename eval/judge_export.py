"""The judge as judge.onnx: uint8 images -> (softmax probs, penultimate features), with parity.

The graph takes the decoder's `image` output as it is (uint8 [B, C, H, W]) and normalises it
inside, exactly as `eval.judge.predict` does (float, / 255). Its contract (names, metadata keys)
lives in vaegen/judge_onnx.py, which workers read without torch. The generic ONNX steps (opset,
stripping the exporter's provenance props, attaching metadata) are the decoder exporter's.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from eval.judge import JudgeNet, JudgeSpec
from exporter._deps import require
from exporter.graph import trace_to_onnx
from exporter.metadata import attach_metadata
from vaegen.errors import InternalFailure
from vaegen.judge_onnx import (
    BATCH_AXIS,
    INPUT_IMAGE,
    JUDGE_ONNX_VERSION,
    OUTPUT_FEATURES,
    OUTPUT_PROBS,
    JudgeSession,
)

PARITY_BATCH_SIZES = (1, 7, 64, 513)
_TRACE_BATCH = 3  # > 1, so torch.export does not specialise the batch axis
# fp32 on both sides, up to summation order and BatchNorm folded into the convolutions.
MAX_PROB_DIFF = 1e-5
MAX_FEATURE_REL_DIFF = 1e-4  # of the largest feature magnitude in the batch (at least 1)


class JudgeForExport(nn.Module):
    """What judge.onnx computes: uint8 image -> (softmax of the logits, pooled features)."""

    def __init__(self, net: JudgeNet) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).float().eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.float() / 255.0  # eval.judge's preprocessing
        features, logits = self.net.forward_features(x)
        return torch.softmax(logits, dim=1), features


def judge_props(
    spec: JudgeSpec, class_names: list[str], test_accuracy: float, dataset: str, **extra: str
) -> dict[str, str]:
    """judge.onnx metadata props (str -> str): the contract keys, then informative extras."""
    props = {
        "vaegen_judge_version": JUDGE_ONNX_VERSION,
        "num_classes": str(spec.num_classes),
        "class_names": json.dumps([str(n) for n in class_names]),
        "image_shape": json.dumps(list(spec.image_shape)),
        "test_accuracy": repr(float(test_accuracy)),
        "dataset": dataset,
        "feature_dim": str(spec.feature_dim),
        "spec_hash": spec.spec_hash(),
    }
    props.update(extra)
    return props


def export_judge_onnx(net: JudgeNet, spec: JudgeSpec, props: dict[str, str]) -> Any:
    """Trace the judge to an onnx.ModelProto (the decoder's opset, dynamic batch) with `props`."""
    require("onnx")
    require("onnxscript")
    wrapper = JudgeForExport(net).cpu()
    example = torch.zeros(_TRACE_BATCH, *spec.image_shape, dtype=torch.uint8)
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    proto = trace_to_onnx(
        wrapper,
        (example,),
        [INPUT_IMAGE],
        [OUTPUT_PROBS, OUTPUT_FEATURES],
        {INPUT_IMAGE: {0: batch}},
    )
    attach_metadata(proto, props)
    return proto


@dataclass(frozen=True)
class JudgeParity:
    """onnxruntime against torch on the same uint8 images, worst case over batch sizes."""

    batch_sizes: tuple[int, ...]
    max_prob_diff: float
    max_feature_rel_diff: float
    top1_disagreements: int
    rows: int

    @property
    def passed(self) -> bool:
        # Written as "x <= tol" so a NaN difference fails.
        return bool(
            self.max_prob_diff <= MAX_PROB_DIFF
            and self.max_feature_rel_diff <= MAX_FEATURE_REL_DIFF
        )

    def summary(self) -> str:
        sizes = ",".join(str(b) for b in self.batch_sizes)
        return (
            f"parity judge.onnx [CPUExecutionProvider] batch sizes {sizes}: "
            f"max|dprobs| {self.max_prob_diff:.3g} (<= {MAX_PROB_DIFF:g}), "
            f"max|dfeatures|/scale {self.max_feature_rel_diff:.3g} (<= {MAX_FEATURE_REL_DIFF:g}), "
            f"top-1 differs on {self.top1_disagreements}/{self.rows} "
            f"{'ok' if self.passed else 'FAILED'}"
        )


def parity_images(images: np.ndarray, rows: int = max(PARITY_BATCH_SIZES)) -> np.ndarray:
    """`rows` uint8 images: the given (real) ones first, then seeded uniform noise."""
    real = images[:rows]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (rows - len(real), *images.shape[1:]), dtype=np.uint8)
    return np.concatenate([real, noise])


def check_judge_parity(
    net: JudgeNet,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
) -> JudgeParity:
    """Load the file with the torch-free JudgeSession and compare it with the torch judge."""
    session = JudgeSession(onnx_path, threads=1)
    wrapper = JudgeForExport(net).cpu()
    x_all = parity_images(images, max(batch_sizes))
    prob_diff = feat_diff = 0.0
    flips = rows = 0
    finite = True
    for size in batch_sizes:
        x = x_all[:size]
        with torch.inference_mode():
            ref_probs, ref_feats = (t.numpy() for t in wrapper(torch.from_numpy(x)))
        probs, feats = session.predict(x)
        if probs.shape != ref_probs.shape or feats.shape != ref_feats.shape:
            raise InternalFailure(
                f"judge.onnx gives {probs.shape}, {feats.shape}; torch {ref_probs.shape}, "
                f"{ref_feats.shape}"
            )
        scale = max(1.0, float(np.abs(ref_feats).max()))
        prob_diff = max(prob_diff, float(np.abs(probs - ref_probs).max()))
        feat_diff = max(feat_diff, float(np.abs(feats - ref_feats).max()) / scale)
        finite = finite and bool(np.isfinite(probs).all() and np.isfinite(feats).all())
        flips += int((probs.argmax(1) != ref_probs.argmax(1)).sum())
        rows += size
    if not finite:
        prob_diff = float("nan")  # fails the check whatever the other figures say
    return JudgeParity(tuple(batch_sizes), prob_diff, feat_diff, flips, rows)
