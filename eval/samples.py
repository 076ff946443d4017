"""The generated images to score: a workers' DATASET directory, or fresh draws from RUN's decoder.

DATASET is read through its file contract only, by vaegen.dataset_reader: `manifest.json` plus
parquet shards, npz shards, or an image folder with `labels.csv`. Anything else, a shard whose
sha256 differs from the manifest, or images of another shape than the model's raises
VaegenError (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaegen.contracts import quantize
from vaegen.dataset_format import UNLABELED, balanced_counts
from vaegen.dataset_reader import DatasetError, open_dataset, read_rows
from vaegen.errors import VaegenError


@dataclass(frozen=True, eq=False)
class SampleSet:
    """uint8 images [N, C, H, W] and int64 labels [N] (-1 everywhere for a plain VAE)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str  # "decoder" or the DATASET path
    format: str  # "decoder", "parquet", "npz" or "imagefolder"
    seed: int | None = None
    ids: np.ndarray | None = None  # the DATASET's row ids (None: decoder draws, in draw order)

    @property
    def labeled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def class_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.labels, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """N labels split as evenly as possible (the lowest classes get the remainder)."""
    counts = balanced_counts(num_samples, range(num_classes))
    return np.repeat(np.arange(num_classes, dtype=np.int64), list(counts.values()))


@torch.no_grad()
def sample_from_decoder(
    model: torch.nn.Module,
    num_samples: int,
    class_names: list[str],
    *,
    seed: int = 0,
    device: torch.device | None = None,
    batch_size: int = 1024,
) -> SampleSet:
    """Decoder mean images for z ~ N(0, I), balanced over classes for a CVAE.

    z is drawn on the CPU from one seeded generator, so the set does not depend on the device
    or the batch size.
    """
    if num_samples < 1:
        raise VaegenError(f"--num-samples must be >= 1; got {num_samples}")
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    z_all = torch.randn((num_samples, cfg.latent_dim), generator=gen)
    if cfg.conditional:
        labels = balanced_labels(num_samples, cfg.num_classes)
    else:
        labels = np.full(num_samples, UNLABELED, dtype=np.int64)
    y_all = torch.from_numpy(labels)
    images = []
    for start in range(0, num_samples, batch_size):
        z = z_all[start : start + batch_size].to(device)
        y = y_all[start : start + batch_size].to(device) if cfg.conditional else None
        images.append(quantize(model.decode(z, y).cpu().numpy()))
    return SampleSet(
        images=np.concatenate(images),
        labels=labels,
        class_names=tuple(class_names),
        source="decoder",
        format="decoder",
        seed=seed,
    )


def read_samples(
    path: str | os.PathLike[str],
    image_shape: tuple[int, int, int],
    class_names: list[str],
    *,
    limit: int | None = None,
) -> SampleSet:
    """Read a generated DATASET (the first `limit` rows when given) for scoring against a model
    that makes `image_shape` images over `class_names`."""
    root = Path(path)
    try:
        dataset = open_dataset(root)
        if dataset.image_shape != tuple(image_shape):
            raise DatasetError(
                root, f"images are {list(dataset.image_shape)}, but the model makes "
                f"{list(image_shape)}"
            )  # fmt: skip
        rows = read_rows(dataset, limit)
    except DatasetError as exc:
        raise VaegenError(f"--samples {exc}") from None
    _check_labels(root, rows.labels, dataset.class_names, class_names)
    return SampleSet(
        images=np.ascontiguousarray(rows.images),
        labels=rows.labels,
        class_names=tuple(class_names),
        source=str(root),
        format=dataset.format,
        seed=dataset.seed,
        ids=rows.ids,
    )


def _check_labels(
    root: Path, labels: np.ndarray, names: tuple[str, ...], class_names: list[str]
) -> None:
    """The rows' labels must be the model's classes (or all UNLABELED)."""
    if len(labels) == 0:
        raise VaegenError(f"--samples {root}: holds no images")
    if labels.min() < UNLABELED or (labels.max() >= 0 and labels.max() >= len(class_names)):
        raise VaegenError(f"--samples {root}: labels outside -1..{len(class_names) - 1}")
    if (labels >= 0).any() and names and names != tuple(class_names):
        raise VaegenError(
            f"--samples {root}: its classes {list(names)} are not the dataset's {list(class_names)}"
        )
