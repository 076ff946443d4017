"""The keys of REPORT/metrics.json (schema "vaegen-eval/1"). eval/README.md explains each one.

Every key below is always present; a metric that was not asked for (or does not apply, such as
CAS for an unconditional VAE) is null. Adding keys is compatible; renaming or removing one
needs a new schema version.
"""

from __future__ import annotations

import copy
from typing import Any

SCHEMA = "vaegen-eval/1"

TEMPLATE: dict[str, Any] = {
    "schema": SCHEMA,
    "vaegen_version": None,
    "run": {
        "run_dir": None,
        "model": None,  # "vae" or "cvae"
        "arch": None,
        "likelihood": None,
        "latent_dim": None,
        "image_shape": None,
        "class_names": None,
        "train_dataset": None,
        "binarize": None,
    },
    "data": {
        "dataset": None,
        "split": None,
        "num_images": None,
        "binarized": None,
        "fingerprint": None,
    },
    "likelihood": {
        "elbo_nats": None,
        "elbo_bits_per_dim": None,
        "reconstruction_nats": None,
        "kl_nats": None,
        "iwae_nll_nats": None,
        "iwae_nll_bits_per_dim": None,
        "iwae_k": None,
        "mse_per_pixel": None,
        "bce_per_pixel": None,
        "active_units": None,
        "kl_per_unit_nats": None,
        "corrupted_reconstruction": None,
        "num_images": None,
        "num_pixels": None,
        "per_class": None,
    },
    "samples": {
        "source": None,
        "format": None,
        "num_samples": None,
        "labeled": None,
        "class_counts": None,
        "seed": None,
        "temperature": None,
        "judge_filter": None,
    },
    "judge": {
        "path": None,
        "cached": None,
        "test_accuracy": None,
        "spec_hash": None,
    },
    "fid": {
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "kid_subset_size": None,
        "precision": None,
        "recall": None,
        "feature_extractor": None,
        "feature_layer": None,
        "num_real": None,
        "num_fake": None,
        "per_class_fid": None,
    },
    "cas": {
        "cas_accuracy": None,
        "cas_accuracy_per_class": None,
        "real_accuracy": None,
        "real_accuracy_per_class": None,
        "label_fidelity": None,
        "label_fidelity_per_class": None,
        "num_synthetic": None,
    },
    "memorization": {  # --samples: near copies of training images (eval/memorization.py)
        "near_copy_rate": None,
        "flagged": None,
        "flag_rate": None,
        "threshold": None,
        "percentile": None,
        "test_near_copy_rate": None,
        "near_copy_rate_per_class": None,
        "synthetic_nn_distance_median": None,
        "test_nn_distance_median": None,
        "closest_pairs": None,
        "num_train": None,
        "num_test": None,
        "num_synthetic": None,
        "feature_layer": None,
        "distance": None,
    },
    "classifier": {  # M2's q(y|x) (train --labels-per-class); null for other models
        "test_accuracy": None,
        "test_accuracy_per_class": None,
        "labels_per_class": None,
    },
    "timings_seconds": {
        "load": None,
        "likelihood": None,
        "iwae": None,
        "samples": None,
        "judge": None,
        "fid": None,
        "cas": None,
        "memorization": None,
        "figures": None,
        "total": None,
    },
    "notes": [],
}


def empty_metrics() -> dict[str, Any]:
    """A fresh copy of the template: every key present, every value null."""
    return copy.deepcopy(TEMPLATE)


def missing_keys(metrics: dict[str, Any]) -> list[str]:
    """Dotted names of template keys absent from `metrics` (empty when it is complete)."""
    missing = []
    for section, value in TEMPLATE.items():
        if section not in metrics:
            missing.append(section)
        elif isinstance(value, dict):
            got = metrics[section]
            missing += [
                f"{section}.{k}" for k in value if not isinstance(got, dict) or k not in got
            ]
    return missing
