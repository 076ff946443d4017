"""The int8 export check: quality parity with fp32, not pixel parity.

The fp32 and int8 decoders decode the same latents and labels (z ~ N(0, I) with a fixed seed,
classes balanced); the judge then scores both sets: label fidelity (its accuracy against the
conditioning labels) and FID against the real test split in its feature space. The int8 file
passes when fidelity drops by at most `max_fidelity_drop` and FID grows by at most
`max_fid_ratio`; the pixel statistics (mean and max |image diff|) are reported, not judged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exporter._deps import require
from exporter.graph import INPUT_Y, INPUT_Z, OUTPUT_IMAGE
from vaegen.errors import InternalFailure, VaegenError

# images uint8 [N, C, H, W] -> (class probabilities [N, K], features [N, F])
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_DECODE_BATCH = 1024


@dataclass(frozen=True)
class JudgeData:
    """The judge as the check uses it (built by exporter.int8_judge)."""

    scorer: Scorer
    real_features: np.ndarray  # the judge's features of the real test split
    description: str


@dataclass(frozen=True)
class QualityCheck:
    max_fidelity_drop: float = 0.005
    max_fid_ratio: float = 1.1
    num_samples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.max_fidelity_drop >= 0 or not self.max_fid_ratio >= 1:
            raise VaegenError("--int8-max-fidelity-drop must be >= 0 and --int8-max-fid-ratio >= 1")
        if self.num_samples < 2:
            raise VaegenError(f"--int8-samples must be >= 2; got {self.num_samples}")


@dataclass(frozen=True)
class QualityReport:
    """fp32 vs int8 on the same inputs, as the judge sees them."""

    num_samples: int
    judge: str
    fidelity_fp32: float | None  # None for a plain VAE (no labels to check)
    fidelity_int8: float | None
    fid_fp32: float
    fid_int8: float
    mean_pixel_diff: float  # levels of 255
    max_pixel_diff: int
    check: QualityCheck

    @property
    def fidelity_drop(self) -> float:
        if self.fidelity_fp32 is None or self.fidelity_int8 is None:
            return 0.0
        return self.fidelity_fp32 - self.fidelity_int8

    @property
    def fid_ratio(self) -> float:
        return self.fid_int8 / self.fid_fp32 if self.fid_fp32 > 0 else float(self.fid_int8 > 0)

    @property
    def passed(self) -> bool:
        # "x <= tol" so a NaN fails.
        tol = self.check
        fid_ok = self.fid_int8 <= self.fid_fp32 * tol.max_fid_ratio
        return bool(self.fidelity_drop <= tol.max_fidelity_drop and fid_ok)

    def summary(self) -> str:
        tol = self.check
        fidelity = (
            "label fidelity n/a (no labels)"
            if self.fidelity_fp32 is None
            else f"label fidelity {self.fidelity_int8:.4f} vs fp32 {self.fidelity_fp32:.4f} "
            f"(drop {self.fidelity_drop:+.4f}, max {tol.max_fidelity_drop:g})"
        )
        return (
            f"int8 quality [{self.judge}, {self.num_samples:,} samples]: {fidelity}; "
            f"FID {self.fid_int8:.3f} vs fp32 {self.fid_fp32:.3f} (ratio {self.fid_ratio:.3f}, "
            f"max {tol.max_fid_ratio:g}); pixels mean|diff| {self.mean_pixel_diff:.3f}, "
            f"max|diff| {self.max_pixel_diff} levels {'ok' if self.passed else 'FAILED'}"
        )


def fid(features: np.ndarray, real_features: np.ndarray) -> float:
    """FID between two feature sets, through torch-fidelity's statistics steps (as eval.fid)."""
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [
        fid_features_to_statistics(torch.from_numpy(f).double()) for f in (features, real_features)
    ]
    return float(fid_statistics_to_metric(*stats, False)["frechet_inception_distance"])


def _inputs(latent_dim: int, num_classes: int, check: QualityCheck) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(check.seed)
    feeds = {INPUT_Z: rng.standard_normal((check.num_samples, latent_dim), dtype=np.float32)}
    if num_classes:
        feeds[INPUT_Y] = (np.arange(check.num_samples) % num_classes).astype(np.int64)
    return feeds


def decode(path: str | os.PathLike[str], feeds: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 images of a decoder file for all rows of `feeds`, on onnxruntime's CPU provider."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        n = len(feeds[INPUT_Z])
        parts = [
            session.run([OUTPUT_IMAGE], {k: v[i : i + _DECODE_BATCH] for k, v in feeds.items()})[0]
            for i in range(0, n, _DECODE_BATCH)
        ]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
        raise InternalFailure(f"onnxruntime cannot run {path}: {exc}") from exc
    return np.concatenate(parts)


def check_quality(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    meta: dict[str, str],
    judge: JudgeData,
    check: QualityCheck,
) -> QualityReport:
    """Decode the same inputs with both files and compare them through the judge."""
    num_classes = int(meta["num_classes"])
    feeds = _inputs(int(meta["latent_dim"]), num_classes, check)
    ref, got = decode(fp32_path, feeds), decode(int8_path, feeds)
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    (p_ref, f_ref), (p_got, f_got) = judge.scorer(ref), judge.scorer(got)
    labels = feeds.get(INPUT_Y)
    fidelity = [None, None] if labels is None else [
        float((p.argmax(1) == labels).mean()) for p in (p_ref, p_got)
    ]  # fmt: skip
    return QualityReport(
        num_samples=check.num_samples,
        judge=judge.description,
        fidelity_fp32=fidelity[0],
        fidelity_int8=fidelity[1],
        fid_fp32=fid(f_ref, judge.real_features),
        fid_int8=fid(f_got, judge.real_features),
        mean_pixel_diff=float(diff.mean()),
        max_pixel_diff=int(diff.max()),
        check=check,
    )
