"""The judge's training recipe: random shifts, determinism, threads, and the cache version."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eval.judge import (
    JudgeSpec,
    all_cores,
    cache_key,
    get_judge,
    load_judge_file,
    shift_images,
    train_classifier,
)
from trainer.datasets import dataset_fingerprint


def _shift_of(image: torch.Tensor, moved: torch.Tensor, s: int) -> tuple[int, int] | None:
    """The (dy, dx) in [-s, s] that turns `image` into `moved` (zero fill), or None."""
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (s, s, s, s))
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            window = padded[..., s - dy : s - dy + h, s - dx : s - dx + w]
            if torch.equal(window, moved):
                return dy, dx
    return None


def _framed(n: int, c: int, size: int, margin: int, seed: int = 0) -> torch.Tensor:
    """Random non-zero content with `margin` blank pixels on every side."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, c, size, size, dtype=torch.uint8)
    inner = size - 2 * margin
    x[..., margin : size - margin, margin : size - margin] = torch.randint(
        1, 256, (n, c, inner, inner), generator=gen, dtype=torch.uint8
    )
    return x


def test_shift_images_translates_each_image_within_max_shift() -> None:
    x = _framed(64, 1, 28, margin=4)  # MNIST-like: a 4-pixel blank border
    moved = shift_images(x, 2, torch.Generator().manual_seed(1))
    assert moved.dtype == torch.uint8 and moved.shape == x.shape
    shifts = [_shift_of(x[i], moved[i], 2) for i in range(len(x))]
    assert None not in shifts
    assert len(set(shifts)) > 10  # each image draws its own shift
    assert {abs(c) for s in shifts for c in s} == {0, 1, 2}


def test_shift_is_capped_at_an_eighth_of_the_image() -> None:
    x = _framed(200, 3, 8, margin=2)
    moved = shift_images(x, 2, torch.Generator().manual_seed(1))
    shifts = {_shift_of(x[i], moved[i], 1) for i in range(len(x))}
    assert None not in shifts and len(shifts) == 9  # every (dy, dx) in [-1, 1]^2
    tiny = torch.ones(4, 1, 7, 7, dtype=torch.uint8)
    assert torch.equal(shift_images(tiny, 2, torch.Generator()), tiny)  # 7 // 8 == 0: none


def test_shift_never_cuts_content_off() -> None:
    """Images that fill their frame stay put; one blank row or column allows one pixel."""
    full = _framed(50, 1, 28, margin=0)
    assert torch.equal(shift_images(full, 2, torch.Generator().manual_seed(0)), full)
    x = torch.zeros(300, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 1:, :27] = torch.randint(1, 256, (300, 1, 27, 27), dtype=torch.uint8)
    moved = shift_images(x, 2, torch.Generator().manual_seed(0))
    shifts = {_shift_of(x[i], moved[i], 2) for i in range(len(x))}
    # Content moves up by at most 1 (its blank top row), right by at most 1, never down or left.
    assert shifts == {(0, 0), (-1, 0), (0, 1), (-1, 1)}
    assert torch.equal(moved.sum((1, 2, 3), dtype=torch.int64), x.sum((1, 2, 3), dtype=torch.int64))


def test_all_cores_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with all_cores():
            assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _state(spec: JudgeSpec, digits: Any) -> dict[str, torch.Tensor]:
    train, _ = digits
    net = train_classifier(spec, train.images, train.labels, torch.device("cpu"))
    return net.state_dict()


def test_training_is_deterministic(digits: Any) -> None:
    train, _ = digits
    spec = JudgeSpec(image_shape=train.image_shape, num_classes=10, steps=30)
    first, second = _state(spec, digits), _state(spec, digits)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = _state(dataclasses.replace(spec, seed=1), digits)
    assert not torch.equal(first["head.weight"], other["head.weight"])


def test_small_sets_train_for_max_epochs(digits: Any) -> None:
    train, _ = digits
    per_epoch = len(train.images) // 128
    by_steps = JudgeSpec(image_shape=train.image_shape, num_classes=10, steps=per_epoch)
    by_epochs = dataclasses.replace(by_steps, steps=10**9, max_epochs=1)  # same single pass
    first, second = _state(by_steps, digits), _state(by_epochs, digits)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_recipe_reaches_high_accuracy_on_digits(digits_judge: Any) -> None:
    # The shipped recipe on the 8x8 digits (1.4k training images, 30 epochs).
    assert digits_judge.test_accuracy >= 0.97
    assert digits_judge.spec.version >= 2


def test_a_cache_entry_of_an_older_version_is_retrained(digits: Any, tmp_path: Path) -> None:
    train, test = digits
    new = JudgeSpec(image_shape=train.image_shape, num_classes=10, steps=20)
    old = dataclasses.replace(new, version=1)
    fingerprint = dataset_fingerprint("digits")
    calls = []

    def load_train() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return train.images, train.labels

    args = (load_train, test.images, test.labels, list(test.class_names), torch.device("cpu"))
    first = get_judge(old, fingerprint, *args, cache_dir=tmp_path)
    assert cache_key(fingerprint, old) != cache_key(fingerprint, new)
    # Even an old entry found under the new key (a stale copy) is not taken for the new recipe.
    stale = tmp_path / f"{cache_key(fingerprint, new)}.safetensors"
    shutil.copy(first.weights_path, stale)
    shutil.copy(first.weights_path.with_suffix(".json"), stale.with_suffix(".json"))
    second = get_judge(new, fingerprint, *args, cache_dir=tmp_path)
    assert len(calls) == 2 and not second.cached
    _, spec, _ = load_judge_file(stale)
    assert spec == new
    assert json.loads(stale.with_suffix(".json").read_text())["spec"]["version"] == new.version


def test_spec_rejects_bad_recipe_values() -> None:
    from vaegen.errors import VaegenError

    for bad in ({"label_smoothing": 1.0}, {"max_shift": -1}, {"steps": 0}):
        with pytest.raises(VaegenError):
            JudgeSpec(image_shape=(1, 8, 8), num_classes=10, **bad)
