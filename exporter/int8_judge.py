"""The judge for the int8 check: `--judge JUDGE` (a folder from `vaegen judge`), else eval's cached
judge for RUN's dataset, trained on its real training split on a cache miss; both through
eval.judge.get_judge, as `vaegen eval` scores. The real test split is loaded too: its judge
features are FID's reference set, as in `vaegen eval`."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from exporter.int8_check import JudgeData, Scorer
from vaegen.errors import VaegenError

_BATCH = 1024


def _real_test(info: Any) -> tuple[Any, str, str | None, int | None]:
    from trainer.datasets import load_dataset

    train = info.train or {}
    spec = train.get("dataset") or info.dataset.get("name")
    if not spec:
        raise VaegenError("the int8 check needs RUN's dataset, and its config names none")
    data_dir, size = train.get("data_dir"), train.get("image_size")
    try:
        test = load_dataset(str(spec), "test", data_dir=data_dir, image_size=size)
    except VaegenError as exc:
        raise VaegenError(f"the int8 check needs RUN's real test split: {exc}") from None
    if tuple(test.image_shape) != tuple(info.config.image_shape):
        raise VaegenError(f"dataset {spec} images do not match the model's; cannot judge int8")
    return test, str(spec), data_dir, size


def torch_scorer(net: Any) -> Scorer:
    """A trained eval.judge.JudgeNet on the CPU: softmax of its logits, pooled features."""
    import torch

    def score(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = [], []
        with torch.inference_mode():
            for i in range(0, len(images), _BATCH):
                x = torch.from_numpy(images[i : i + _BATCH]).float().div_(255.0)
                f, logits = net.forward_features(x)
                probs.append(torch.softmax(logits, 1).numpy())
                feats.append(f.numpy())
        return np.concatenate(probs), np.concatenate(feats)

    return score


def judge_for_run(info: Any, judge_dir: str | os.PathLike[str] | None) -> JudgeData:
    """The scorer and the real test features for RUN (trainer.checkpoint ModelInfo)."""
    import torch

    from eval.judge import JudgeSpec, get_judge
    from trainer.datasets import dataset_fingerprint, load_dataset

    test, spec, data_dir, size = _real_test(info)

    def load_train() -> tuple[np.ndarray, np.ndarray]:
        train = load_dataset(spec, "train", data_dir=data_dir, image_size=size)
        return train.images, train.labels

    judge = get_judge(
        JudgeSpec(image_shape=tuple(test.image_shape), num_classes=test.num_classes),
        dataset_fingerprint(spec, data_dir=data_dir, image_size=size),
        load_train,
        test.images,
        test.labels,
        list(test.class_names),
        torch.device("cpu"),
        artifact=judge_dir,
    )
    scorer = torch_scorer(judge.net.cpu().eval())
    source = f"judge {judge_dir}" if judge_dir is not None else f"{spec} judge"
    what = f"{source}, test accuracy {judge.test_accuracy:.4f}"
    return JudgeData(scorer, scorer(test.images)[1], what)
