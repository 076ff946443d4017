"""Dataset utility: CAS and label fidelity.

CAS (classification accuracy score, Ravuri & Vinyals 2019): the judge's architecture and recipe,
trained on the synthetic images alone, tested on the real test split. Its ceiling is the same
classifier trained on real data (the cached judge's test accuracy). Label fidelity: the judge's
accuracy on the synthetic images against the labels they were conditioned on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eval.judge import Judge, accuracy, predict, train_classifier
from vaegen.errors import VaegenError


@dataclass(frozen=True)
class CasResult:
    cas_accuracy: float
    cas_accuracy_per_class: dict[str, float]
    real_accuracy: float
    real_accuracy_per_class: dict[str, float]
    label_fidelity: float
    label_fidelity_per_class: dict[str, float]
    num_synthetic: int


def label_fidelity(
    judge: Judge,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """Judge accuracy on synthetic images against their conditioning labels."""
    return accuracy(predict(judge.net, images, device), labels, class_names)


def classification_accuracy_score(
    judge: Judge,
    synth_images: np.ndarray,
    synth_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: list[str],
    device: torch.device,
) -> CasResult:
    """Train on synthetic, test on real; alongside the real-data ceiling and label fidelity."""
    if len(synth_labels) == 0 or (synth_labels < 0).any():
        raise VaegenError("CAS needs labeled samples (a CVAE's); these carry no labels")
    net = train_classifier(judge.spec, synth_images, synth_labels, device, what="CAS classifier")
    cas, cas_per_class = accuracy(predict(net, test_images, device), test_labels, class_names)
    fid_acc, fid_per_class = label_fidelity(judge, synth_images, synth_labels, class_names, device)
    return CasResult(
        cas_accuracy=cas,
        cas_accuracy_per_class=cas_per_class,
        real_accuracy=judge.test_accuracy,
        real_accuracy_per_class=judge.test_accuracy_per_class,
        label_fidelity=fid_acc,
        label_fidelity_per_class=fid_per_class,
        num_synthetic=int(len(synth_labels)),
    )
