"""`vaegen train --dataset digits` with every other flag at its default gives a model that is not
collapsed and whose samples keep their labels (issue #13: defaults that work)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.run import evaluate
from trainer.collapse import COLLAPSE_KL_NATS
from trainer.options import build_configs
from trainer.run import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_default_flags_on_digits_train_a_model_with_labels_that_hold(tmp_path: Path) -> None:
    model_cfg, train_cfg = build_configs(dataset="digits")  # the CLI's defaults, nothing else
    assert train_cfg.batch_size == 32  # digits' own default (trainer/config.py)
    result = train(model_cfg, train_cfg, tmp_path / "run", show_progress=False)
    assert result.metrics["train_kl"] > COLLAPSE_KL_NATS
    metrics = evaluate(
        tmp_path / "run",
        tmp_path / "report",
        cas=True,
        num_samples=1000,
        cache_dir=str(tmp_path / "judges"),
        figures=False,
        device="cpu",
    )
    assert metrics["likelihood"]["active_units"] >= 2
    assert metrics["cas"]["label_fidelity"] >= 0.9, metrics["cas"]
