"""The judge: a small CNN classifier trained on a dataset's real training split.

It serves three metrics: its penultimate layer is the feature space for FID/KID/precision/recall
(offline, instead of InceptionV3), its architecture trained on synthetic data gives CAS, and its
predictions on synthetic images give label fidelity. A trained judge is cached under
`<cache>/judges/<dataset fingerprint>-<spec hash>.safetensors` with a JSON sidecar, and reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.judge_net import (  # one definition, shared with the trainer's perceptual loss
    CACHE_ENV,
    JudgeNet,
    JudgeSpec,
    cache_key,
    judge_cache_dir,
    load_judge_file,
    save_judge_file,
)
from trainer.judge_net import (
    JUDGE_FORMAT as JUDGE_FORMAT,  # eval.judge_artifact's
)
from vaegen.errors import VaegenError
from vaegen.progress import progress


@dataclass(frozen=True)
class Judge:
    """A trained judge and what it scored on the real test split."""

    net: JudgeNet
    spec: JudgeSpec
    test_accuracy: float
    test_accuracy_per_class: dict[str, float]
    weights_path: Path | None  # the cached safetensors file, which the FID extractor loads
    cached: bool  # True when reused from the cache
    num_train: int | None = None  # training images (None when unknown)


def _as_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images).to(device).float().div_(255.0)


def _check_data(spec: JudgeSpec, images: np.ndarray, labels: np.ndarray, what: str) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != spec.image_shape:
        raise VaegenError(
            f"{what}: images of shape {images.shape[1:]}, expected {spec.image_shape}"
        )
    if images.dtype != np.uint8:
        raise VaegenError(f"{what}: images must be uint8, got {images.dtype}")
    if len(labels) != len(images) or len(images) == 0:
        raise VaegenError(f"{what}: {len(images)} images and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise VaegenError(f"{what}: labels outside 0..{spec.num_classes - 1}")


def _blank_margins(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image of a [B, C, H, W] batch: its empty (all-zero) rows above and below its content
    and columns left and right of it, as four [B] tensors (a blank image: H or W each)."""
    filled = x.amax(1) > 0  # [B, H, W]

    def leading_empty(lines: torch.Tensor) -> torch.Tensor:
        first = lines.to(torch.uint8).argmax(1)  # the first filled line
        return torch.where(lines.any(1), first, torch.full_like(first, lines.shape[1]))

    rows, cols = filled.any(2), filled.any(1)
    return (
        leading_empty(rows),
        leading_empty(rows.flip(1)),
        leading_empty(cols),
        leading_empty(cols.flip(1)),
    )


def _draw(low: torch.Tensor, high: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One uniform integer in [low, high] per entry."""
    u = torch.rand(low.shape, generator=gen).to(low.device)
    return torch.minimum(low + (u * (high - low + 1)).long(), high)


def dataset_shift(images: torch.Tensor, max_shift: int) -> int:
    """The shift augmentation a training set gets: `max_shift`, capped by its median image's
    narrowest blank margin. MNIST digits sit in a blank frame (median 3 px) and get 2 px;
    Fashion-MNIST items and 8x8 digits touch their frame (median 0) and are not shifted: with
    2-px shifts the Fashion judge scored 0.905-0.908, without 0.914 (docs/quality.md)."""
    sample = images[:: max(1, len(images) // 10000)]  # a spread-out sample is enough
    narrowest = torch.stack(_blank_margins(sample), 1).amin(1)
    return min(max_shift, int(narrowest.median()))


def shift_images(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Move each image of a [B, C, H, W] batch by its own random (dy, dx) in [-s, s], filling
    the border with zeros; s is `max_shift`, capped at H/8 and W/8 (8x8 digits move 1 pixel).

    An image moves only into its own blank margin, so no content is cut off: MNIST digits sit
    in a 4-pixel empty border and move freely, while Fashion-MNIST items, scaled to touch the
    frame, move only where they leave room (shifts that crop them cost the judge accuracy).
    """
    b, _, h, w = x.shape
    s = min(max_shift, h // 8, w // 8)
    if s == 0:
        return x
    top, bottom, left, right = (m.clamp(max=s) for m in _blank_margins(x))
    # Output row r shows input row r + t: t > 0 moves the content up, into its top margin.
    dy = _draw(-bottom, top, gen) + s
    dx = _draw(-right, left, gen) + s
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    padded = F.pad(x, (s, s, s, s)).permute(0, 2, 3, 1)  # B, H+2s, W+2s, C
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """Run torch on every core this process may use, then restore the caller's thread count.

    A caller (or a library) may have set fewer; a fixed count also keeps CPU results equal
    from run to run on one machine.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(
    spec: JudgeSpec,
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    what: str = "judge",
) -> JudgeNet:
    """Train JudgeNet on uint8 [N, C, H, W] images: Adam on a one-cycle schedule, label
    smoothing, random shifts (where the data leaves room: dataset_shift). Seeded, so reruns on
    one machine give the same weights."""
    _check_data(spec, images, labels, what)
    n = len(images)
    if n < 2:
        raise VaegenError(f"{what}: needs at least 2 images to train on")
    batch = min(spec.batch_size, n)
    total = min(spec.steps, spec.max_epochs * (n // batch))
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), all_cores():
        torch.manual_seed(spec.seed)
        net = JudgeNet(spec).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=spec.lr, total_steps=total, pct_start=0.15
        )
        gen = torch.Generator().manual_seed(spec.seed)
        # The whole uint8 set moves once (MNIST is 47 MB); batches are then gathered on the device.
        x_all = torch.from_numpy(images).to(device)
        y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
        max_shift = dataset_shift(x_all, spec.max_shift)
        net.train()
        step = 0
        with progress(f"train {what}", total) as bar:
            while step < total:
                order = torch.randperm(n, generator=gen).to(device)
                # Full batches only: BatchNorm needs 2+ images, and equal steps are fairer.
                for start in range(0, n - batch + 1, batch):
                    idx = order[start : start + batch]
                    x = shift_images(x_all[idx], max_shift, gen).float().div_(255.0)
                    loss = F.cross_entropy(net(x), y_all[idx], label_smoothing=spec.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    step += 1
                    bar.advance(1, f"loss {loss.item():.3f}" if step % 100 == 0 else "")
                    if step >= total:
                        break
    net.eval()
    return net


@torch.no_grad()
def predict(
    net: JudgeNet, images: np.ndarray, device: torch.device, batch_size: int = 1024
) -> np.ndarray:
    """Predicted class per image (int64 [N])."""
    net = net.to(device).eval()
    preds = []
    for start in range(0, len(images), batch_size):
        x = _as_float(images[start : start + batch_size], device)
        preds.append(net(x).argmax(1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def accuracy(
    preds: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> tuple[float, dict[str, float]]:
    """Overall accuracy and per-class accuracy (classes with no images are left out)."""
    if len(labels) == 0:
        raise VaegenError("cannot score accuracy on an empty set")
    overall = float((preds == labels).mean())
    per_class = {}
    for c, name in enumerate(class_names):
        mask = labels == c
        if mask.any():
            per_class[str(name)] = float((preds[mask] == c).mean())
    return overall, per_class


def _load_cached(
    path: Path, spec: JudgeSpec, fingerprint: str, device: torch.device
) -> Judge | None:
    """The cache entry at `path` when it holds this spec's judge of this dataset; a corrupt
    entry counts as a miss (the caller retrains and overwrites it)."""
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return None
    try:
        net, cached_spec, meta = load_judge_file(path)
        if cached_spec != spec or meta.get("dataset_fingerprint") != fingerprint:
            return None
        return Judge(
            net=net.to(device),
            spec=spec,
            test_accuracy=float(meta["test_accuracy"]),
            test_accuracy_per_class=dict(meta["test_accuracy_per_class"]),
            weights_path=path,
            cached=True,
            num_train=meta.get("num_train"),
        )
    except (VaegenError, KeyError, TypeError, ValueError):
        return None


def _save_cached(path: Path, net: nn.Module, spec: JudgeSpec, meta: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_judge_file(path, net, spec, meta)
    except OSError as exc:
        raise VaegenError(
            f"cannot write the judge cache {path.parent}: {exc.strerror or exc}; set {CACHE_ENV}"
        ) from None


def get_judge(
    spec: JudgeSpec,
    fingerprint: str,
    load_train: Any,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: list[str],
    device: torch.device,
    cache_dir: str | os.PathLike[str] | None = None,
    artifact: str | os.PathLike[str] | None = None,
) -> Judge:
    """The cached judge for (dataset fingerprint, spec), or train, score and cache a new one.

    `load_train()` returns the training split (images, labels); it is called only on a cache
    miss. A corrupt cache entry counts as a miss and is overwritten. `artifact`, a JUDGE folder
    written by `vaegen judge` (`vaegen eval --judge`), is used instead of the cache, with its own
    spec; it must have been trained on the dataset of `fingerprint`.
    """
    if artifact is not None:
        from eval.judge_artifact import load_judge_artifact

        return load_judge_artifact(artifact, fingerprint, device)
    path = judge_cache_dir(cache_dir) / f"{cache_key(fingerprint, spec)}.safetensors"
    cached = _load_cached(path, spec, fingerprint, device)
    if cached is not None:
        return cached
    images, labels = load_train()
    start = time.perf_counter()
    net = train_classifier(spec, images, labels, device)
    seconds = time.perf_counter() - start
    acc, per_class = accuracy(predict(net, test_images, device), test_labels, class_names)
    meta = {
        "dataset_fingerprint": fingerprint,
        "class_names": list(class_names),
        "num_train": int(len(images)),
        "train_seconds": seconds,
        "test_accuracy": acc,
        "test_accuracy_per_class": per_class,
    }
    _save_cached(path, net, spec, meta)
    return Judge(
        net=net,
        spec=spec,
        test_accuracy=acc,
        test_accuracy_per_class=per_class,
        weights_path=path,
        cached=False,
        num_train=int(len(images)),
    )
