"""The judge's network, its spec and its file format: the one definition that eval (which trains
and scores judges) and the trainer (whose perceptual loss reads a trained judge's features) share.

A trained judge is a safetensors file of weights with a JSON sidecar (format, spec, dataset
fingerprint, test accuracy). The cache keeps them under
`<cache>/judges/<dataset fingerprint>-<spec hash>.safetensors`; a JUDGE folder written by
`vaegen judge` holds `judge.safetensors` + `judge.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaegen.atomic import atomic_path, write_json_atomic
from vaegen.errors import VaegenError

JUDGE_FORMAT = "vaegen-judge/1"
CACHE_ENV = "VAEGEN_CACHE"


@dataclass(frozen=True)
class JudgeSpec:
    """Architecture and training recipe. Its hash names the cache entry, so any change retrains."""

    image_shape: tuple[int, int, int]
    num_classes: int
    channels: tuple[int, ...] = (32, 64, 128)
    steps: int = 3000  # optimizer steps on a large set (MNIST: 6.4 epochs) ...
    max_epochs: int = 30  # ... and at most this many passes over a small one (digits: 330 steps)
    batch_size: int = 128
    lr: float = 3e-3  # the one-cycle schedule's peak
    label_smoothing: float = 0.1
    max_shift: int = 2  # training images move by up to this many pixels (at most H/8, W/8)
    fc: int = 0  # features: 0 = global average pool of the last stage, else a layer this wide
    seed: int = 0
    version: int = 3  # bump when JudgeNet or train_classifier change meaning (3: shifts only
    # into blank margins, none for data that fills its frame: eval.judge.dataset_shift)

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise VaegenError(f"judge image shape must be (C, H, W): {self.image_shape}")
        if self.num_classes < 2:
            raise VaegenError("the judge needs a dataset with at least 2 classes")
        if min(self.steps, self.max_epochs, self.batch_size) < 1 or not self.lr > 0:
            raise VaegenError("judge steps, epochs, batch size and lr must be positive")
        if not self.channels or min(self.channels) < 1:
            raise VaegenError("judge channels must be positive")
        if not 0 <= self.label_smoothing < 1 or min(self.max_shift, self.fc) < 0:
            raise VaegenError("judge label smoothing must lie in [0, 1), max_shift and fc >= 0")

    @property
    def feature_dim(self) -> int:
        return self.fc or self.channels[-1]

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
    """[conv3x3-BN-ReLU (-maxpool)] per stage, then the feature layer, then a linear head.

    The feature layer is the global average pool of the last stage (like InceptionV3's pool3)
    or, with `spec.fc`, a linear-BN-ReLU layer over the whole last map, which keeps where
    things are (a shirt's sleeves). In eval mode every image is scored on its own (BN uses
    running statistics), whatever the batch.
    """

    def __init__(self, spec: JudgeSpec) -> None:
        super().__init__()
        self.stages = len(spec.channels)
        c, h, w = spec.image_shape
        layers: list[nn.Module] = []
        channels = c
        for out_ch in spec.channels:
            layers += [nn.Conv2d(channels, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.ReLU()]
            if min(h, w) >= 8:  # pool only while the map stays at least 4x4
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            channels = out_ch
        if spec.fc:
            fc = nn.Linear(channels * h * w, spec.fc)
            layers += [nn.Flatten(), fc, nn.BatchNorm1d(spec.fc), nn.ReLU()]
        else:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(spec.feature_dim, spec.num_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x float in [0, 1], [B, C, H, W] -> (features [B, spec.feature_dim], logits)."""
        feats = self.conv(x)
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    @property
    def num_layers(self) -> int:
        """Layers `layer_outputs` can return: one per conv stage, then the feature layer."""
        return self.stages + 1

    def layer_outputs(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """Activations of the 1-based `layers` for x in [0, 1]: layer i <= stages is conv stage
        i after its ReLU (before pooling), the last is the feature layer; in `layers` order."""
        found: dict[int, torch.Tensor] = {}
        stage = 0
        for module in self.conv:
            x = module(x)
            if isinstance(module, nn.ReLU) and stage < self.stages:
                stage += 1
                found[stage] = x
        found[self.num_layers] = x
        return [found[i] for i in layers]


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
