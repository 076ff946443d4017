"""What a `vaegen train --resume` must repeat: RUN/run_config.json, checked before Ray starts.

A checkpoint holds weights and optimizer state of one model on one dataset; resuming it with
another model config (a state_dict size mismatch deep inside a Ray worker), dataset, image size
or objective cannot work, or would silently train something else. Epochs, learning rate, batch
size and the Ray scaling may change on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.checkpoint import CONFIG_FILE
from trainer.config import ModelConfig, TrainConfig
from vaegen.atomic import write_json_atomic
from vaegen.errors import VaegenError

RUN_CONFIG = "run_config.json"
MODEL = "model"  # trainer.run.MODEL: RUN/model/config.json, for runs made before run_config.json
# TrainConfig fields a checkpoint depends on ("loss.objective": a field of train.loss): the
# discriminator in a VAE-GAN's checkpoints, the judge and M2's labeled subset (seeded) are part
# of what the run trains.
TRAIN_FIELDS = (
    "dataset",
    "image_size",
    "loss.objective",
    "loss.perceptual_weight",
    "loss.perceptual_layers",
    "loss.judge_sha256",
    "loss.adversarial_weight",
    "labels_per_class",
)
SEMI_SUPERVISED_FIELDS = ("seed",)  # the labeled subset is drawn under it


def record_run(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Write RUN/run_config.json: the configs this run's checkpoints are made with."""
    write_json_atomic(
        run_dir / RUN_CONFIG, {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    )


def check_same_run(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """VaegenError naming the first field that differs from the run being resumed."""
    old = _recorded(run_dir)
    if old is None:
        return  # a run from before run_config.json with no model yet: nothing to compare
    new = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    pairs = [(f"model.{k}", k) for k in new["model"]]
    fields = TRAIN_FIELDS
    if _get(old, "train.labels_per_class") is not None:
        fields += SEMI_SUPERVISED_FIELDS
    pairs += [(f"train.{k}", k.rsplit(".", 1)[-1]) for k in fields]
    for path, name in pairs:
        was, now = _get(old, path), _get(new, path)
        if was is not None and _plain(was) != _plain(now):
            raise VaegenError(
                f"cannot resume {run_dir} with a different {name} ({was!r} -> {now!r}); "
                "repeat its settings or use a new --out"
            )


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    for path in (run_dir / RUN_CONFIG, run_dir / MODEL / CONFIG_FILE):
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise VaegenError(f"cannot resume {run_dir}: unreadable {path.name} ({exc})") from None
    return None


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)  # type: ignore[assignment]
    return tree


def _plain(value: Any) -> Any:
    """JSON's view of a value: tuples and lists compare equal."""
    return json.loads(json.dumps(value))
