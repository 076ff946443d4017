"""Turn uint8 images into model inputs: scaled to [0, 1], or binarized for Bernoulli models."""

from __future__ import annotations

import numpy as np

from vaegen.errors import VaegenError

FIXED_BINARIZATION_SEED = 0


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 [N, C, H, W] -> float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


def binarize_fixed(images: np.ndarray, seed: int = FIXED_BINARIZATION_SEED) -> np.ndarray:
    """Binarize once under a fixed seed, as the published MNIST likelihood tables do.

    Same recipe as ../shared/data/README.md: `rng.random((N, D)) < x / 255`, drawn over the
    flattened images so the result matches that reference bit for bit.
    """
    if images.dtype != np.uint8:
        raise VaegenError(f"binarization expects uint8 images, got {images.dtype}")
    n = images.shape[0]
    flat = images.reshape(n, -1)
    rng = np.random.default_rng(seed)
    binary = rng.random(flat.shape) < flat / 255.0
    return binary.astype(np.float32).reshape(images.shape)


def evaluation_inputs(images: np.ndarray, binarize: bool) -> np.ndarray:
    """Test-split inputs: fixed binarization for models trained on binarized data."""
    return binarize_fixed(images) if binarize else scale(images)
