"""Memorization: are generated images near copies of real training images?

In the judge's feature space (FID's layer, each feature vector scaled to unit length), every
generated image and every held-out real test image gets the L2 distance to its nearest real
training image. Held-out images are not copies by definition, so the 1st percentile of their
distances is the threshold: a generated image closer than that is a near copy. Held-out data
scores 1% by construction; a generated set that scores over twice that, at a rate improbable
for held-out-like data (`flag_rate`), is flagged.

Pure steps, features -> nearest-neighbour distances -> statistics, under constant keys (the
"memorization" section of metrics.json); `check_samples` runs them on a RUN's data.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eval.loading import RealData
from eval.samples import SampleSet
from vaegen.errors import VaegenError

PERCENTILE = 1.0  # of held-out test-to-train distances: the near-copy threshold
FLAG_FACTOR = 2.0  # flagged above this many times the held-out rate ...
FLAG_ALPHA = 1e-3  # ... when that many near copies have P < FLAG_ALPHA for held-out-like data
CLOSEST_PAIRS = 8
DISTANCE = "l2-unit"  # L2 between unit-length feature vectors (sqrt(2 - 2 cos))


@dataclass(frozen=True)
class Neighbours:
    """Per query: the L2 distance to its nearest reference (float64) and that reference's row."""

    distance: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class ClosestPairs:
    """The report figure's pairs: generated images, their nearest training images, distances."""

    synthetic: np.ndarray  # uint8 [k, C, H, W]
    train: np.ndarray  # uint8 [k, C, H, W]
    distance: np.ndarray  # float64 [k]


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit L2 norm (all-zero rows stay zero): distances then depend on a
    feature vector's direction, not on its length (contrast, stroke width)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor,
    refs: torch.Tensor,
    *,
    query_chunk: int = 1024,
    ref_chunk: int = 16384,
) -> Neighbours:
    """Nearest row of `refs` [M, D] for each row of `queries` [N, D], by L2 distance.

    Chunks of ||q||^2 + ||r||^2 - 2 q.r in float32 (matrix products; at most query_chunk x
    ref_chunk distances alive) pick the neighbour; its distance is then recomputed exactly in
    float64, which the float32 expansion would lose near zero (an exact copy).
    """
    if queries.dim() != 2 or refs.dim() != 2 or queries.shape[1] != refs.shape[1]:
        raise VaegenError(
            f"nearest neighbours need [N, D] and [M, D] features: {tuple(queries.shape)} "
            f"and {tuple(refs.shape)}"
        )
    if len(refs) == 0 or min(query_chunk, ref_chunk) < 1:
        raise VaegenError("nearest neighbours need references and positive chunk sizes")
    refs32 = refs.float()
    ref_sq = refs32.square().sum(1)
    distances, indices = [], []
    for qs in range(0, len(queries), query_chunk):
        q = queries[qs : qs + query_chunk]
        best = torch.full((len(q),), math.inf, device=q.device)
        best_i = torch.zeros(len(q), dtype=torch.int64, device=q.device)
        for rs in range(0, len(refs), ref_chunk):
            # ||q||^2 is the same along a row: the argmin needs only ||r||^2 - 2 q.r
            d = torch.addmm(
                ref_sq[rs : rs + ref_chunk], q.float(), refs32[rs : rs + ref_chunk].T, alpha=-2
            )
            value, arg = d.min(dim=1)
            closer = value < best
            best = torch.where(closer, value, best)
            best_i = torch.where(closer, arg + rs, best_i)
        exact = (q.double() - refs[best_i].double()).square().sum(1).sqrt()
        distances.append(exact.cpu().numpy())
        indices.append(best_i.cpu().numpy())
    if not distances:
        return Neighbours(np.zeros(0), np.zeros(0, np.int64))
    return Neighbours(np.concatenate(distances), np.concatenate(indices))


def _null_tail(num_synthetic: int, num_test: int, percentile: float) -> np.ndarray:
    """P(X >= c) for c = 0..N, X the near copies among N generated images drawn like the test
    images. The threshold lies at or below the k-th smallest of n test distances (k below),
    whose CDF value U is Beta(k, n + 1 - k); given U, X is Binomial(N, U): X is
    beta-binomial(N, k, n + 1 - k), exactly, whatever the distance distribution."""
    n, big_n = num_test, num_synthetic
    k = min(math.floor(percentile / 100 * (n - 1)) + 2, n)  # numpy's linear quantile: <= T_(k)
    a, b = float(k), float(n + 1 - k)
    x = torch.arange(big_n + 1, dtype=torch.float64)
    lg, mlg = torch.lgamma, math.lgamma
    log_pmf = (
        lg(x + a) + lg(big_n - x + b) - lg(x + 1) - lg(big_n - x + 1)
        + (mlg(big_n + 1) - mlg(big_n + a + b) - mlg(a) - mlg(b) + mlg(a + b))
    )  # fmt: skip
    return torch.flip(torch.cumsum(torch.flip(log_pmf.exp(), [0]), 0), [0]).numpy()


def flag_rate(num_synthetic: int, num_test: int, percentile: float = PERCENTILE) -> float | None:
    """The lowest near-copy rate that is flagged: above FLAG_FACTOR times the held-out rate p
    (a real excess), and improbable (P < FLAG_ALPHA) for generated images drawn like held-out
    ones, counting the noise of the threshold as well. None when N is too small to flag."""
    if min(num_synthetic, num_test) < 1:
        raise VaegenError("the memorization check needs generated and test images")
    tail = _null_tail(num_synthetic, num_test, percentile)
    counts = np.arange(num_synthetic + 1)
    ok = (tail < FLAG_ALPHA) & (counts > FLAG_FACTOR * percentile / 100 * num_synthetic)
    return float(counts[ok][0] / num_synthetic) if ok.any() else None


def closest_rows(synthetic: Neighbours, k: int = CLOSEST_PAIRS) -> np.ndarray:
    """Rows of the k generated images nearest to the training set, nearest first."""
    return np.argsort(synthetic.distance, kind="stable")[:k]


def memorization_statistics(
    synthetic: Neighbours,
    test: Neighbours,
    *,
    synthetic_labels: np.ndarray,
    synthetic_ids: np.ndarray,
    train_labels: np.ndarray,
    class_names: list[str],
    percentile: float = PERCENTILE,
    k: int = CLOSEST_PAIRS,
) -> dict[str, Any]:
    """The "memorization" keys from the two sets' nearest-training-image distances."""
    n, n_test = len(synthetic.distance), len(test.distance)
    limit = flag_rate(n, n_test, percentile)
    threshold = float(np.quantile(test.distance, percentile / 100))
    near = synthetic.distance < threshold
    rate = float(near.mean())
    per_class = None
    if n and (synthetic_labels >= 0).all():
        masks = {str(name): synthetic_labels == c for c, name in enumerate(class_names)}
        per_class = {name: float(near[m].mean()) if m.any() else None for name, m in masks.items()}
    pairs = [
        {
            "synthetic_id": int(synthetic_ids[i]),
            "synthetic_label": int(synthetic_labels[i]),
            "train_index": int(synthetic.index[i]),
            "train_label": int(train_labels[synthetic.index[i]]),
            "distance": float(synthetic.distance[i]),
        }
        for i in closest_rows(synthetic, k)
    ]
    return {
        "near_copy_rate": rate,
        "flagged": limit is not None and rate >= limit,
        "flag_rate": limit,
        "threshold": threshold,
        "percentile": percentile,
        "test_near_copy_rate": float((test.distance < threshold).mean()),
        "near_copy_rate_per_class": per_class,
        "synthetic_nn_distance_median": float(np.median(synthetic.distance)),
        "test_nn_distance_median": float(np.median(test.distance)),
        "closest_pairs": pairs,
        "num_synthetic": n,
        "num_test": n_test,
    }


def check_samples(
    real: RealData,
    judge_weights: str | os.PathLike[str],
    samples: SampleSet,
    *,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[dict[str, Any], ClosestPairs]:
    """The memorization check of a generated set against RUN's real training split, in the
    judge's FID features; returns the "memorization" section and the closest pairs."""
    from eval import fid

    train_images, train_labels = real.load_train()
    # float32: the 60k training images take half the time of FID's float64, and a nearest
    # neighbour does not move with the last bits.
    extractor = fid.judge_extractor(judge_weights, dtype="float32")
    sets = {"training images": train_images, "test images": real.test.images}
    sets["generated images"] = samples.images
    layer, feats = fid.layer_features(
        sets, extractor, cuda=device.type == "cuda", batch_size=batch_size
    )
    train, test, synthetic = (unit_rows(f.to(device)) for f in feats.values())
    synthetic_nn = nearest_neighbours(synthetic, train)
    ids = samples.ids if samples.ids is not None else np.arange(len(samples.labels))
    section = memorization_statistics(
        synthetic_nn,
        nearest_neighbours(test, train),
        synthetic_labels=samples.labels,
        synthetic_ids=ids,
        train_labels=train_labels,
        class_names=real.class_names,
    )
    section.update(num_train=len(train_images), feature_layer=layer, distance=DISTANCE)
    rows = closest_rows(synthetic_nn)
    pairs = ClosestPairs(
        samples.images[rows], train_images[synthetic_nn.index[rows]], synthetic_nn.distance[rows]
    )
    return section, pairs
