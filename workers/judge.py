"""The judge of `--judge`: its file checked against the decoder (driver) and scoring (actors).

The judge is a vaegen judge.onnx (contract and session: vaegen/judge_onnx.py): uint8 images in,
softmax `probs` out. A sample passes when the judge's top-1 class is its conditioning label
and the probability of that label is at least --min-confidence. onnxruntime alone runs it,
so the workers stay torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaegen.contracts import sha256_file
from vaegen.errors import VaegenError
from vaegen.judge_onnx import CPU_PROVIDERS, JudgeSession
from workers.decoder_meta import DecoderInfo

DEFAULT_MIN_CONFIDENCE = 0.0  # top-1 agreement alone
# Rows per judge call. Fixed, not --batch-size: which samples pass must not depend on how the
# rows were batched (a resume may change --batch-size).
JUDGE_BATCH = 1024


@dataclass(frozen=True)
class JudgeInfo:
    """The judge file a job filters with, as checked in the driver."""

    path: str
    sha256: str
    test_accuracy: float  # on its dataset's real test split, from its metadata
    dataset: str

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "test_accuracy": self.test_accuracy,
            "dataset": self.dataset,
        }


def read_judge(
    path: str | os.PathLike[str], decoder: DecoderInfo, min_confidence: float
) -> JudgeInfo:
    """Check that `path` is a judge of the decoder's classes and images, or raise VaegenError."""
    if not decoder.conditional:
        raise VaegenError(
            "--judge keeps samples whose judged class is their label; the model is an "
            "unconditional VAE (num_classes 0), whose samples have no label"
        )
    if not 0.0 <= min_confidence <= 1.0:
        raise VaegenError(f"--min-confidence must lie in [0, 1], got {min_confidence:g}")
    meta = JudgeSession(path, threads=1).meta  # checks its metadata and its I/O signature
    if meta.image_shape != decoder.image_shape or meta.num_classes != decoder.num_classes:
        raise VaegenError(
            f"--judge {path} judges {meta.num_classes} classes of {list(meta.image_shape)} "
            f"images; the model makes {decoder.num_classes} classes of "
            f"{list(decoder.image_shape)}"
        )
    if meta.class_names != decoder.class_names:
        raise VaegenError(
            f"--judge {path} names its classes {list(meta.class_names)}, the model "
            f"{list(decoder.class_names)}: a judge of another dataset?"
        )
    return JudgeInfo(
        path=str(Path(path).resolve()),
        sha256=sha256_file(path),
        test_accuracy=meta.test_accuracy,
        dataset=meta.dataset,
    )


class JudgeScorer:
    """One judge session per actor; `score` says which samples pass, and how confidently."""

    def __init__(
        self, model: bytes, min_confidence: float, *, providers: tuple[str, ...] = CPU_PROVIDERS,
        threads: int = 1,
    ) -> None:  # fmt: skip
        self.session = JudgeSession(model, providers=providers, threads=threads)
        self.min_confidence = np.float32(min_confidence)

    def score(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(passed bool [n], confidence float32 [n]): the judge's probability of each label."""
        n = len(labels)
        passed = np.zeros(n, dtype=bool)
        confidence = np.zeros(n, dtype=np.float32)
        for start in range(0, n, JUDGE_BATCH):
            stop = min(start + JUDGE_BATCH, n)
            probs, _ = self.session.predict(images[start:stop])
            want = labels[start:stop]
            conf = probs[np.arange(stop - start), want]
            passed[start:stop] = (probs.argmax(axis=1) == want) & (conf >= self.min_confidence)
            confidence[start:stop] = conf
        return passed, confidence
