"""RUN/model/: `model.safetensors` (weights only, never unpickled) + `config.json`.

The two files together rebuild the model. Anything else in the folder is a defect, and a file
that is not safetensors (a pickle, a zip, a truncated header) is refused before any parsing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaegen import __version__
from vaegen.atomic import atomic_path, write_json_atomic
from vaegen.contracts import sha256_file
from vaegen.errors import VaegenError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_FILES = frozenset({WEIGHTS_FILE, CONFIG_FILE})
FORMAT = "vaegen-model/1"
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class ModelInfo:
    """What config.json says besides the model config."""

    model_dir: Path
    config: Any  # ModelConfig (kept untyped here so this module imports without torch)
    dataset: dict[str, Any]
    train: dict[str, Any]
    metrics: dict[str, Any]
    vaegen_version: str

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset.get("class_names", []))


def model_dir_of(path: str | Path) -> Path:
    """Accept RUN or RUN/model."""
    path = Path(path)
    if (path / "model").is_dir():
        return path / "model"
    return path


def _check_safetensors_file(path: Path) -> None:
    """Refuse pickles/zips and truncated files by reading the header ourselves first."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise VaegenError(f"{path} is a pickle/zip file, not safetensors; refusing to load it")
        if len(head) < 8:
            raise VaegenError(f"{path} is truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise VaegenError(f"{path} is corrupt or truncated (bad safetensors header)")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise VaegenError(f"{path} is corrupt (unreadable safetensors header)") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + header_len + max(ends, default=0) > size:
        raise VaegenError(f"{path} is truncated ({size} bytes)")


def save_model(
    out_dir: str | Path,
    model: Any,
    dataset: dict[str, Any],
    train: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """Write the unwrapped model's weights and config, each to a temporary name then renamed."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json_atomic(
        out_dir / CONFIG_FILE,
        {
            "format": FORMAT,
            "vaegen_version": __version__,
            "model": model.cfg.to_dict(),
            "dataset": dataset,
            "train": train,
            "metrics": metrics,
            "weights_sha256": sha256_file(out_dir / WEIGHTS_FILE),
        },
    )
    return out_dir


def read_model_info(path: str | Path) -> ModelInfo:
    """Parse and validate config.json (cheap: no torch, no weights)."""
    from trainer.config import ModelConfig

    model_dir = model_dir_of(path)
    config_path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise VaegenError(f"{path} is not a vaegen run or model directory")
    for name in sorted(MODEL_FILES):
        if not (model_dir / name).is_file():
            raise VaegenError(f"{model_dir / name} is missing")
    try:
        raw = json.loads(config_path.read_text())
        if raw.get("format") != FORMAT:
            raise VaegenError(f"{config_path} is not a {FORMAT} config")
        cfg = ModelConfig.from_dict(raw["model"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VaegenError(f"{config_path} is not valid JSON") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise VaegenError(f"{config_path} is malformed ({exc})") from None
    return ModelInfo(
        model_dir=model_dir,
        config=cfg,
        dataset=dict(raw.get("dataset", {})),
        train=dict(raw.get("train", {})),
        metrics=dict(raw.get("metrics", {})),
        vaegen_version=str(raw.get("vaegen_version", "")),
    )


def load_model(path: str | Path) -> tuple[Any, ModelInfo]:
    """Rebuild the model from RUN/model in eval mode; mismatches raise VaegenError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trainer.models import build_model

    info = read_model_info(path)
    weights = info.model_dir / WEIGHTS_FILE
    _check_safetensors_file(weights)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise VaegenError(f"{weights} is corrupt: {exc}") from None
    model = build_model(info.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        )
        raise VaegenError(f"config.json and {WEIGHTS_FILE} disagree ({detail})")
    model.load_state_dict(state)
    model.eval()
    return model, info
