"""The memorization check: chunked nearest neighbours against brute force, the statistics on a
constructed case, the flag rule's false-alarm rate, and `vaegen eval --samples` on a model's own
samples (not flagged) against a dataset with real training images planted in it (flagged)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eval.memorization import (
    Neighbours,
    flag_rate,
    memorization_statistics,
    nearest_neighbours,
    unit_rows,
)
from eval.run import evaluate
from eval.samples import sample_from_decoder
from vaegen.errors import VaegenError

NAMES = [str(i) for i in range(10)]
PLANTED = 0.3


@pytest.mark.parametrize(("query_chunk", "ref_chunk"), [(64, 300), (1024, 16384), (50, 129)])
def test_chunked_nearest_neighbours_equal_brute_force(query_chunk: int, ref_chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    refs = torch.randn(1000, 16, generator=gen)
    queries = torch.randn(300, 16, generator=gen)
    queries[5] = refs[917]  # an exact copy: distance 0, not float32 cancellation noise
    got = nearest_neighbours(queries, refs, query_chunk=query_chunk, ref_chunk=ref_chunk)
    full = torch.cdist(queries.double(), refs.double())
    want_d, want_i = full.min(dim=1)
    np.testing.assert_array_equal(got.index, want_i.numpy())
    np.testing.assert_allclose(got.distance, want_d.numpy(), rtol=1e-12, atol=1e-12)
    assert got.index[5] == 917 and got.distance[5] == 0.0


def test_nearest_neighbours_rejects_bad_shapes() -> None:
    with pytest.raises(VaegenError):
        nearest_neighbours(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(VaegenError):
        nearest_neighbours(torch.zeros(3, 4), torch.zeros(0, 4))


def test_unit_rows() -> None:
    rows = unit_rows(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    torch.testing.assert_close(rows, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def _unlabeled_statistics(synthetic: Neighbours, test: Neighbours) -> dict[str, Any]:
    n = len(synthetic.distance)
    return memorization_statistics(
        synthetic,
        test,
        synthetic_labels=np.full(n, -1),
        synthetic_ids=np.arange(n),
        train_labels=np.zeros(int(synthetic.index.max()) + 1, np.int64),
        class_names=[],
    )


def test_statistics_on_a_constructed_case() -> None:
    # Test distances 0..99: the 1st percentile (linear) is 0.99, and only 0 lies below it.
    test = Neighbours(np.arange(100, dtype=np.float64), np.zeros(100, np.int64))
    distance = np.array([5.0, 0.5, 7.0, 0.98, 0.99, 3.0, 1.0, 0.0, 9.0, 4.0])
    synthetic = Neighbours(distance, np.arange(10, dtype=np.int64) * 2)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 1])
    stats = memorization_statistics(
        synthetic,
        test,
        synthetic_labels=labels,
        synthetic_ids=np.arange(100, 110),
        train_labels=np.arange(20) % 3,
        class_names=["a", "b", "c", "d"],
        k=3,
    )
    assert stats["threshold"] == pytest.approx(0.99)
    assert stats["near_copy_rate"] == pytest.approx(0.3)  # 0.5, 0.98 and 0.0; not 0.99 itself
    assert stats["test_near_copy_rate"] == pytest.approx(0.01)
    assert stats["near_copy_rate_per_class"] == {"a": pytest.approx(2 / 3), "b": 0.2, "c": 0.0,
                                                 "d": None}  # fmt: skip
    # 3 of 10 is not improbable enough against 100 test images: 4 of 10 would be.
    assert stats["flag_rate"] == pytest.approx(0.4) == _reference_flag_rate(10, 100)
    assert stats["flagged"] is False
    assert stats["synthetic_nn_distance_median"] == pytest.approx(2.0)
    assert stats["test_nn_distance_median"] == pytest.approx(49.5)
    assert [p["synthetic_id"] for p in stats["closest_pairs"]] == [107, 101, 103]
    assert stats["closest_pairs"][0] == {
        "synthetic_id": 107,
        "synthetic_label": 0,
        "train_index": 14,
        "train_label": 2,
        "distance": 0.0,
    }
    unlabeled = _unlabeled_statistics(synthetic, test)
    assert unlabeled["near_copy_rate_per_class"] is None
    assert len(unlabeled["closest_pairs"]) == 8


def _reference_flag_rate(num_synthetic: int, num_test: int) -> float:
    """scipy's beta-binomial: the smallest count above 2% with a null tail under 1e-3, where the
    threshold sits at or below the k-th smallest test distance."""
    stats = pytest.importorskip("scipy.stats")
    k = math.floor(0.01 * (num_test - 1)) + 2
    null = stats.betabinom(num_synthetic, k, num_test + 1 - k)
    # scipy's tail is slow: search counts just above 2% (the answers here lie below 50%)
    counts = np.arange(math.floor(0.02 * num_synthetic) + 1, num_synthetic // 2 + 1)
    return counts[null.sf(counts - 1) < 1e-3][0] / num_synthetic


@pytest.mark.parametrize(
    ("num_synthetic", "num_test", "expected"),
    [(1000, 360, 0.046), (10_000, 10_000, 0.0201), (2000, 1000, None)],
)
def test_flag_rule_against_scipy(num_synthetic: int, num_test: int, expected: float | None) -> None:
    want = _reference_flag_rate(num_synthetic, num_test)
    assert flag_rate(num_synthetic, num_test) == pytest.approx(want)
    if expected is not None:
        assert want == pytest.approx(expected)
    assert flag_rate(1, 360) is None  # one image can never be improbable enough
    with pytest.raises(VaegenError):
        flag_rate(0, 100)


def test_flag_rule_rarely_flags_held_out_like_data() -> None:
    """Generated images as far from the training set as held-out ones (same distribution):
    at the sizes of the digits test below (1000 generated, 360 test), a false alarm is rare."""
    rng = np.random.default_rng(0)
    flagged = 0
    trials = 400
    for _ in range(trials):
        test = Neighbours(rng.gamma(4.0, size=360), np.zeros(360, np.int64))
        synthetic = Neighbours(rng.gamma(4.0, size=1000), np.zeros(1000, np.int64))
        flagged += _unlabeled_statistics(synthetic, test)["flagged"]
    assert flagged <= 2  # P = 1e-3 per trial: 0.4 expected


@pytest.fixture(scope="module")
def own_samples(cvae_model: Any) -> tuple[np.ndarray, np.ndarray]:
    drawn = sample_from_decoder(cvae_model, 1000, NAMES, seed=1)
    return drawn.images, drawn.labels


@pytest.fixture
def score(
    tmp_path: Path,
    cvae_run: Path,
    judge_cache: Path,
    digits_judge: Any,
    make_generated: Callable[..., Path],
) -> Callable[..., tuple[dict[str, Any], Path]]:
    """Write images as a DATASET, run `vaegen eval RUN --samples DATASET` on it with the
    session's judge: (metrics, DATASET); the report is tmp_path / "report"."""

    def run(images: np.ndarray, labels: np.ndarray, **fields: Any) -> tuple[dict[str, Any], Path]:
        dataset = make_generated(tmp_path / "dataset", images, labels, NAMES)
        out = tmp_path / "report"
        metrics = evaluate(
            cvae_run, out, samples=str(dataset), cache_dir=str(judge_cache), device="cpu", **fields
        )
        on_disk = json.loads((out / "metrics.json").read_text())
        assert on_disk["memorization"] == json.loads(json.dumps(metrics["memorization"]))
        assert metrics["judge"]["cached"] is True  # the session's judge: its features
        assert metrics["timings_seconds"]["memorization"] > 0
        return metrics, dataset

    return run


def test_own_samples_are_not_flagged(
    score: Callable[..., tuple[dict[str, Any], Path]],
    digits: Any,
    own_samples: tuple[np.ndarray, np.ndarray],
) -> None:
    metrics, _ = score(*own_samples, figures=False)
    mem = metrics["memorization"]
    train, test = digits
    assert (mem["num_train"], mem["num_test"]) == (len(train.images), len(test.images))
    assert mem["num_synthetic"] == 1000 == metrics["samples"]["num_samples"]  # every row read
    assert mem["flagged"] is False and mem["near_copy_rate"] < 0.02
    assert mem["test_near_copy_rate"] == pytest.approx(0.01, abs=0.003)
    assert mem["feature_layer"] == "penultimate" and mem["distance"] == "l2-unit"
    assert set(mem["near_copy_rate_per_class"]) == set(NAMES)
    assert min(p["distance"] for p in mem["closest_pairs"]) > 0  # nothing was copied


def test_planted_training_images_are_flagged(
    tmp_path: Path,
    score: Callable[..., tuple[dict[str, Any], Path]],
    digits: Any,
    own_samples: tuple[np.ndarray, np.ndarray],
) -> None:
    train, _ = digits
    images, labels = (a.copy() for a in own_samples)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(images), size=int(PLANTED * len(images)), replace=False)
    sources = rng.choice(len(train.images), size=len(rows), replace=False)
    images[rows], labels[rows] = train.images[sources], train.labels[sources]
    metrics, dataset = score(images, labels)
    mem = metrics["memorization"]
    assert mem["flagged"] is True
    assert mem["near_copy_rate"] == pytest.approx(PLANTED, abs=0.02)
    for pair in mem["closest_pairs"]:  # exact copies come first, each with its source image
        assert pair["synthetic_id"] in set(rows.tolist()) and pair["distance"] < 1e-6
        np.testing.assert_array_equal(
            train.images[pair["train_index"]], images[pair["synthetic_id"]]
        )
        assert pair["train_label"] == pair["synthetic_label"]
    out = tmp_path / "report"
    html = (out / "report.html").read_text()
    assert "<strong>flagged</strong>" in html and "figures/closest_pairs.png" in html
    assert (out / "figures" / "closest_pairs.png").read_bytes()[:4] == b"\x89PNG"
    card = (dataset / "README.md").read_text()
    assert (
        f"| near copies: closer to train than 1% of test images | {mem['near_copy_rate']:.4g} |"
        in card
    )
