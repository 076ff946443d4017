"""JUDGE/: a dataset's judge as a folder of fixed files, written by `vaegen judge`.

    judge.safetensors  the weights (nothing in it is unpickled)
    judge.json         spec, dataset (name, fingerprint, class names, image shape), test accuracy,
                       the ONNX file's sha256 and parity figures
    judge.onnx         uint8 images -> (probs, features); see vaegen/judge_onnx.py

The folder is built under a temporary name beside JUDGE, verified (ONNX checker, the torch-free
loader, parity against torch) and only then renamed into place: a failure leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.judge import JUDGE_FORMAT, Judge, load_judge_file, save_judge_file
from eval.judge_export import JudgeParity, check_judge_parity, export_judge_onnx, judge_props
from exporter._deps import require
from vaegen import __version__
from vaegen.atomic import ensure_writable_dir, write_json_atomic
from vaegen.contracts import sha256_file
from vaegen.errors import InternalFailure, VaegenError

WEIGHTS_FILE = "judge.safetensors"
CONFIG_FILE = "judge.json"  # the weights' sidecar: load_judge_file finds it by suffix
ONNX_FILE = "judge.onnx"
ARTIFACT_FILES = (WEIGHTS_FILE, CONFIG_FILE, ONNX_FILE)


@dataclass(frozen=True)
class DatasetInfo:
    """What the artifact records of the real data its judge was trained and scored on."""

    spec: str  # as given to --dataset
    fingerprint: str
    class_names: tuple[str, ...]
    num_train: int


def is_judge_dir(path: Path) -> bool:
    """True for a folder holding only the artifact's files, with a judge config among them."""
    try:
        names = {p.name for p in path.iterdir()}
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return names <= set(ARTIFACT_FILES) and config.get("format") == JUDGE_FORMAT


def check_out(out: Path) -> Path:
    """--out must be new, empty, or an earlier judge (replaced); its parent must be writable."""
    if out.exists():
        if not out.is_dir():
            raise VaegenError(f"--out {out} is a file; give a folder for the judge")
        if any(out.iterdir()) and not is_judge_dir(out):
            raise VaegenError(f"--out {out} exists and is not a judge; give a new or empty folder")
    ensure_writable_dir(out.parent)
    return out


def _publish(stage: Path, out: Path) -> None:
    """Rename the verified folder onto `out`; an earlier judge there is moved aside first."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; an artifact is for others to read
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old)  # onto the empty folder mkdtemp made
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)  # rename(2) may replace an empty folder


def write_judge_artifact(
    out: str | os.PathLike[str], judge: Judge, data: DatasetInfo, test_images: np.ndarray
) -> JudgeParity:
    """Write JUDGE/ for a trained `judge`; `test_images` feed the parity check."""
    out = check_out(Path(out))
    onnx = require("onnx")
    net = judge.net.cpu().eval()
    meta: dict[str, Any] = {
        "vaegen_version": __version__,
        "dataset": data.spec,
        "dataset_fingerprint": data.fingerprint,
        "class_names": list(data.class_names),
        "image_shape": list(judge.spec.image_shape),
        "num_train": data.num_train,
        "test_accuracy": judge.test_accuracy,
        "test_accuracy_per_class": judge.test_accuracy_per_class,
    }
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_judge_file(stage / WEIGHTS_FILE, net, judge.spec, meta)
        weights_sha = sha256_file(stage / WEIGHTS_FILE)
        props = judge_props(
            judge.spec,
            list(data.class_names),
            judge.test_accuracy,
            data.spec,
            vaegen_version=__version__,
            dataset_fingerprint=data.fingerprint,
            source_sha256=weights_sha,
        )
        onnx_path = stage / ONNX_FILE
        onnx.save(export_judge_onnx(net, judge.spec, props), str(onnx_path))
        try:
            onnx.checker.check_model(str(onnx_path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise InternalFailure(f"judge.onnx fails the ONNX checker: {exc}") from exc
        parity = check_judge_parity(net, onnx_path, test_images)
        if not parity.passed:
            raise InternalFailure(f"{parity.summary()}; nothing was written")
        meta.update(
            weights_sha256=weights_sha,
            onnx_sha256=sha256_file(onnx_path),
            onnx_parity=parity.summary(),
        )
        write_json_atomic(
            stage / CONFIG_FILE, {"format": JUDGE_FORMAT, "spec": judge.spec.to_dict(), **meta}
        )
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return parity


def load_judge_artifact(
    path: str | os.PathLike[str], fingerprint: str | None, device: torch.device
) -> Judge:
    """The judge in JUDGE/ (or the judge.onnx inside it), checked against the real data it
    will score: `fingerprint` is that dataset's (None skips the check)."""
    root = Path(path)
    if root.name == ONNX_FILE:
        root = root.parent
    if not root.is_dir():
        raise VaegenError(f"--judge {path}: no such judge folder (write one with `vaegen judge`)")
    missing = [name for name in ARTIFACT_FILES if not (root / name).is_file()]
    if missing:
        raise VaegenError(f"--judge {path}: not a judge folder (no {', '.join(missing)})")
    net, spec, meta = load_judge_file(root / WEIGHTS_FILE)
    if fingerprint is not None and meta.get("dataset_fingerprint") != fingerprint:
        raise VaegenError(
            f"--judge {path} was trained on {meta.get('dataset')!r}, another dataset than the "
            "one scored here; write a judge for it with `vaegen judge`"
        )
    try:
        accuracy = float(meta["test_accuracy"])
        per_class = {str(k): float(v) for k, v in dict(meta["test_accuracy_per_class"]).items()}
    except (KeyError, TypeError, ValueError):
        raise VaegenError(f"--judge {path}: {CONFIG_FILE} lacks its test accuracy") from None
    return Judge(
        net=net.to(device),
        spec=spec,
        test_accuracy=accuracy,
        test_accuracy_per_class=per_class,
        weights_path=root / WEIGHTS_FILE,
        cached=False,
    )


@dataclass(frozen=True)
class BuildResult:
    out: Path
    judge: Judge
    data: DatasetInfo
    parity: JudgeParity
    seconds: float


def build_judge(
    dataset: str,
    out: str | os.PathLike[str],
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    steps: int | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """`vaegen judge`: the (cached) judge of `dataset`, trained on its training split and
    scored on its test split, written to JUDGE/ `out`. `steps` overrides the spec's default."""
    from eval.device import resolve_device
    from eval.judge import JudgeSpec, get_judge
    from trainer.datasets import dataset_fingerprint, load_dataset

    start = time.perf_counter()
    out = check_out(Path(out))  # before any long step
    if steps is not None and steps < 1:
        raise VaegenError(f"--steps must be >= 1; got {steps}")
    torch_device = resolve_device(device)
    test = load_dataset(dataset, "test", data_dir=data_dir, image_size=image_size)
    fingerprint = dataset_fingerprint(dataset, data_dir=data_dir, image_size=image_size)
    spec = JudgeSpec(
        image_shape=test.image_shape,
        num_classes=test.num_classes,
        **({"steps": steps} if steps is not None else {}),
    )

    def load_train() -> tuple[np.ndarray, np.ndarray]:
        train = load_dataset(dataset, "train", data_dir=data_dir, image_size=image_size)
        return train.images, train.labels

    names = list(test.class_names)
    judge = get_judge(
        spec, fingerprint, load_train, test.images, test.labels, names, torch_device, cache_dir
    )
    data = DatasetInfo(dataset, fingerprint, tuple(names), int(judge.num_train or 0))
    parity = write_judge_artifact(out, judge, data, test.images)
    return BuildResult(out, judge, data, parity, time.perf_counter() - start)
