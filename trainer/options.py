"""Flat training options (CLI flags, pipeline TOML keys) -> the frozen configs.

The options are the `flag` fields of the configs below (see trainer/config.py); this module
adds none of its own and imports no torch until a dataset is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainer.config import LossConfig, ModelConfig, TrainConfig, check_compatible
from vaegen.options import deal

# Their flags are `vaegen train`'s options and the pipeline's [train] keys.
CONFIGS = (TrainConfig, ModelConfig, LossConfig)


def build_configs(**options: Any) -> tuple[ModelConfig, TrainConfig]:
    """Validate every option (raising VaegenError) and read the dataset's shape and classes."""
    from trainer.datasets import load_dataset

    train_kw, model_kw, loss_kw = deal(options, *CONFIGS)
    train_cfg = TrainConfig(**train_kw, loss=LossConfig(**loss_kw))
    # Checked on placeholder shape and classes first, so a bad flag fails before any data read.
    model_cfg = ModelConfig(**model_kw)
    probe = load_dataset(
        train_cfg.dataset, "test", data_dir=train_cfg.data_dir, image_size=train_cfg.image_size
    )
    model_cfg = dataclasses.replace(
        model_cfg,
        image_shape=probe.image_shape,
        num_classes=probe.num_classes,
        classifier=train_cfg.semi_supervised,  # M2's q(y|x) is part of the model
    )
    check_compatible(model_cfg, train_cfg)
    return model_cfg, train_cfg
