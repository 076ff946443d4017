"""Parity of an exported decoder against the torch model, on a fixed batch.

The batch covers every class (y = row % num_classes) and is run at several batch sizes, 1
included, so a graph that is right only for its trace batch, or mixes rows, fails here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exporter._deps import require
from exporter.graph import INPUT_Y, INPUT_Z, OUTPUT_IMAGE, OUTPUT_MEAN, quantize
from vaegen.errors import InternalFailure, VaegenError

BATCH_SIZES = (1, 7, 64, 513)
SEED = 0
CPU = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class Tolerance:
    """How far ONNX may be from torch: |mean| error, and image pixels off by >= 1 level."""

    max_mean_diff: float
    max_fraction_off: float
    max_level_diff: int

    def describe(self) -> str:
        return (
            f"max|dmean| <= {self.max_mean_diff:g}, pixels off <= {self.max_fraction_off:.4%}, "
            f"max level diff <= {self.max_level_diff}"
        )


# fp32: the same arithmetic up to summation order; a pixel can flip only at a .5 boundary.
FP32_TOLERANCE = Tolerance(max_mean_diff=1e-5, max_fraction_off=1e-4, max_level_diff=1)
# fp16: every rounding of a weight or activation adds up to 2^-11 relative error. Measured on
# CPU (ORT and torch fp16) for MNIST-shaped decoders with logits of std 4..8: max|dmean| 0.0019
# ..0.0043, 2-6% of pixels one level off, none two. The tolerance leaves >2x headroom: 1e-2 on
# the mean, <= 3 levels (ceil(255 * 1e-2)), <= 15% of pixels off. See exporter/README.md.
FP16_TOLERANCE = Tolerance(max_mean_diff=1e-2, max_fraction_off=0.15, max_level_diff=3)


@dataclass(frozen=True)
class ParityReport:
    """Measured figures for one ONNX file against the torch model, over all batch sizes."""

    label: str
    provider: str
    batch_sizes: tuple[int, ...]
    max_mean_diff: float
    pixels: int
    pixels_off: int
    max_level_diff: int
    tolerance: Tolerance

    @property
    def fraction_off(self) -> float:
        return self.pixels_off / max(self.pixels, 1)

    @property
    def passed(self) -> bool:
        # Written as "x <= tol" so a NaN difference fails.
        tol = self.tolerance
        return (
            bool(self.max_mean_diff <= tol.max_mean_diff)
            and self.fraction_off <= tol.max_fraction_off
            and self.max_level_diff <= tol.max_level_diff
        )

    def summary(self) -> str:
        sizes = ",".join(str(b) for b in self.batch_sizes)
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"parity {self.label} [{self.provider}] batch sizes {sizes}: "
            f"max|dmean| {self.max_mean_diff:.3g}, "
            f"image pixels off {self.pixels_off}/{self.pixels} ({self.fraction_off:.4%}), "
            f"max level diff {self.max_level_diff} "
            f"(tolerance: {self.tolerance.describe()}) {verdict}"
        )


def parity_inputs(
    latent_dim: int, num_classes: int, batch_sizes: tuple[int, ...] = BATCH_SIZES
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed z ~ N(0, I) and y = row % num_classes, enough rows for the largest batch and to
    cover every class (y is all zeros for a plain VAE)."""
    rows = max(*batch_sizes, num_classes)
    rng = np.random.default_rng(SEED)
    z = rng.standard_normal((rows, latent_dim), dtype=np.float32)
    y = np.arange(rows, dtype=np.int64) % max(num_classes, 1)
    return z, y


def _session(path: str | os.PathLike[str], providers: tuple[str, ...]) -> Any:
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16-on-CPU cast notes are expected
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
        raise InternalFailure(f"onnxruntime cannot load the export: {exc}") from exc


def check_parity(
    model: Any,
    onnx_path: str | os.PathLike[str],
    tolerance: Tolerance,
    label: str = "fp32",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    providers: tuple[str, ...] = CPU,
) -> ParityReport:
    """Run onnxruntime and the torch model on the fixed batch at each size; report the worst."""
    cfg = model.cfg
    num_classes = cfg.num_classes if cfg.conditional else 0
    sizes = tuple(sorted({*batch_sizes, max(*batch_sizes, num_classes)}))
    z_all, y_all = parity_inputs(cfg.latent_dim, num_classes, sizes)
    session = _session(onnx_path, providers)
    max_mean = 0.0
    pixels = pixels_off = max_level = 0
    for size in sizes:
        z, y = z_all[:size], y_all[:size]
        feeds = {INPUT_Z: z, INPUT_Y: y} if cfg.conditional else {INPUT_Z: z}
        with torch.inference_mode():
            ref_mean_t = model.decode(torch.from_numpy(z), torch.from_numpy(y))
            ref_image = quantize(ref_mean_t).numpy()
            ref_mean = ref_mean_t.numpy()
        if not np.isfinite(ref_mean).all():
            raise VaegenError("the checkpoint's decoder gives non-finite values (bad weights?)")
        try:
            image, mean = session.run([OUTPUT_IMAGE, OUTPUT_MEAN], feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
            raise InternalFailure(f"onnxruntime failed at batch size {size}: {exc}") from exc
        for name, got, want in ((OUTPUT_IMAGE, image, ref_image), (OUTPUT_MEAN, mean, ref_mean)):
            if got.dtype != want.dtype or got.shape != want.shape:
                raise InternalFailure(
                    f"ONNX output {name!r} is {got.dtype}{list(got.shape)}, "
                    f"torch gives {want.dtype}{list(want.shape)}"
                )
        max_mean = max(max_mean, float(np.max(np.abs(mean - ref_mean))))
        if np.isnan(mean).any():
            max_mean = float("nan")
        level = np.abs(image.astype(np.int16) - ref_image.astype(np.int16))
        pixels += level.size
        pixels_off += int(np.count_nonzero(level))
        max_level = max(max_level, int(level.max()))
    return ParityReport(
        label=label,
        provider=providers[0],
        batch_sizes=sizes,
        max_mean_diff=max_mean,
        pixels=pixels,
        pixels_off=pixels_off,
        max_level_diff=max_level,
        tolerance=tolerance,
    )
