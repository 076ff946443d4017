"""The judge: a small CNN classifier trained on a dataset's real training split.

It serves three metrics: its penultimate layer is the feature space for FID/KID/precision/recall
(offline, instead of InceptionV3), its architecture trained on synthetic data gives CAS, and its
predictions on synthetic images give label fidelity. A trained judge is cached under
`<cache>/judges/<dataset fingerprint>-<spec hash>.safetensors` with a JSON sidecar, and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaegen.atomic import atomic_path, write_json_atomic
from vaegen.errors import VaegenError
from vaegen.progress import progress

JUDGE_FORMAT = "vaegen-judge/1"
CACHE_ENV = "VAEGEN_CACHE"


@dataclass(frozen=True)
class JudgeSpec:
    """Architecture and training recipe. Its hash names the cache entry, so any change retrains."""

    image_shape: tuple[int, int, int]
    num_classes: int
    channels: tuple[int, ...] = (16, 32, 64)
    steps: int = 2000  # optimizer steps, whatever the dataset size (epochs follow)
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    version: int = 1  # bump when JudgeNet or train_classifier change meaning

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise VaegenError(f"judge image shape must be (C, H, W): {self.image_shape}")
        if self.num_classes < 2:
            raise VaegenError("the judge needs a dataset with at least 2 classes")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or not self.channels:
            raise VaegenError("judge steps, batch size, lr and channels must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgeSpec:
        kwargs = dict(data)
        kwargs["image_shape"] = tuple(int(v) for v in kwargs["image_shape"])
        kwargs["channels"] = tuple(int(v) for v in kwargs["channels"])
        return cls(**kwargs)

    def spec_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


class JudgeNet(nn.Module):
    """[conv3x3-BN-ReLU (-maxpool)] per stage, global average pool (the feature layer), linear.

    Like InceptionV3's pool3 -> fc, the features are globally pooled conv maps: in eval mode
    every image is scored on its own (BN uses running statistics), whatever the batch.
    """

    def __init__(self, spec: JudgeSpec) -> None:
        super().__init__()
        c, h, w = spec.image_shape
        layers: list[nn.Module] = []
        channels = c
        for out_ch in spec.channels:
            layers += [nn.Conv2d(channels, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.ReLU()]
            if min(h, w) >= 8:  # pool only while the map stays at least 4x4
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            channels = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(channels, spec.num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x float in [0, 1], [B, C, H, W] -> (pooled features [B, channels[-1]], logits)."""
        feats = self.conv(x)
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


@dataclass(frozen=True)
class Judge:
    """A trained judge and what it scored on the real test split."""

    net: JudgeNet
    spec: JudgeSpec
    test_accuracy: float
    test_accuracy_per_class: dict[str, float]
    weights_path: Path | None  # the cached safetensors file, which the FID extractor loads
    cached: bool  # True when reused from the cache


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


def train_classifier(
    spec: JudgeSpec,
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    what: str = "judge",
) -> JudgeNet:
    """Train JudgeNet on uint8 [N, C, H, W] images with Adam; seeded, so reruns match on CPU."""
    _check_data(spec, images, labels, what)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(spec.seed)
        net = JudgeNet(spec).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    # The whole uint8 set moves once (MNIST is 47 MB); batches are then gathered on the device.
    x_all = torch.from_numpy(images).to(device)
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    n = len(images)
    if n < 2:
        raise VaegenError(f"{what}: needs at least 2 images to train on")
    batch = min(spec.batch_size, n)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.steps)
    net.train()
    step = 0
    with progress(f"train {what}", spec.steps) as bar:
        while step < spec.steps:
            order = torch.randperm(n, generator=gen).to(device)
            # Full batches only: BatchNorm needs more than one image, and equal steps are fairer.
            for start in range(0, n - batch + 1, batch):
                idx = order[start : start + batch]
                x = x_all[idx].float().div_(255.0)
                y = y_all[idx]
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.advance(1, f"loss {loss.item():.3f}" if step % 100 == 0 else "")
                if step >= spec.steps:
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


def judge_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """`cache_dir`, else $VAEGEN_CACHE/judges, else ~/.cache/vaegen/judges."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "vaegen"
    return base / "judges"


def cache_key(fingerprint: str, spec: JudgeSpec) -> str:
    return f"{fingerprint[:32]}-{spec.spec_hash()[:16]}"


def save_judge_file(path: Path, net: JudgeNet, spec: JudgeSpec, meta: dict[str, Any]) -> None:
    """Weights (safetensors) then the JSON sidecar, each atomically: the JSON marks completion."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": JUDGE_FORMAT})
    write_json_atomic(
        path.with_suffix(".json"), {"format": JUDGE_FORMAT, "spec": spec.to_dict(), **meta}
    )


def load_judge_file(path: str | os.PathLike[str]) -> tuple[JudgeNet, JudgeSpec, dict[str, Any]]:
    """Rebuild a judge from its safetensors file and JSON sidecar; VaegenError if unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != JUDGE_FORMAT:
            raise VaegenError(f"{sidecar} is not a {JUDGE_FORMAT} file")
        spec = JudgeSpec.from_dict(meta["spec"])
        net = JudgeNet(spec)
        net.load_state_dict(load_file(str(path)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise VaegenError(f"judge {path} is unusable: {exc}") from None
    return net.eval(), spec, meta


def get_judge(
    spec: JudgeSpec,
    fingerprint: str,
    load_train: Any,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: list[str],
    device: torch.device,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Judge:
    """The cached judge for (dataset fingerprint, spec), or train, score and cache a new one.

    `load_train()` returns the training split (images, labels); it is called only on a cache
    miss. A corrupt cache entry counts as a miss and is overwritten.
    """
    directory = judge_cache_dir(cache_dir)
    path = directory / f"{cache_key(fingerprint, spec)}.safetensors"
    if path.is_file() and path.with_suffix(".json").is_file():
        try:
            net, cached_spec, meta = load_judge_file(path)
            if cached_spec == spec and meta.get("dataset_fingerprint") == fingerprint:
                return Judge(
                    net=net.to(device),
                    spec=spec,
                    test_accuracy=float(meta["test_accuracy"]),
                    test_accuracy_per_class=dict(meta["test_accuracy_per_class"]),
                    weights_path=path,
                    cached=True,
                )
        except (VaegenError, KeyError, TypeError, ValueError):
            pass  # retrain below
    images, labels = load_train()
    start = time.perf_counter()
    net = train_classifier(spec, images, labels, device)
    seconds = time.perf_counter() - start
    acc, per_class = accuracy(predict(net, test_images, device), test_labels, class_names)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_judge_file(
            path,
            net,
            spec,
            {
                "dataset_fingerprint": fingerprint,
                "class_names": list(class_names),
                "num_train": int(len(images)),
                "train_seconds": seconds,
                "test_accuracy": acc,
                "test_accuracy_per_class": per_class,
            },
        )
    except OSError as exc:
        raise VaegenError(
            f"cannot write the judge cache {directory}: {exc.strerror or exc}; set {CACHE_ENV}"
        ) from None
    return Judge(
        net=net,
        spec=spec,
        test_accuracy=acc,
        test_accuracy_per_class=per_class,
        weights_path=path,
        cached=False,
    )
