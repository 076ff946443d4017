"""`EvalOptions`: what `vaegen eval` was asked to do, declared once.

Each `flag` field is a `vaegen eval` option, a pipeline [eval] key and a keyword of
`eval.run.evaluate`; a `cli=False` one is not on the command line. No torch here: the pipeline
reads the keys from this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vaegen.errors import VaegenError
from vaegen.options import flag


@dataclass(frozen=True)
class EvalOptions:
    dataset: str | None = flag(
        None, "Real data to score against (default: RUN's training dataset)."
    )
    data_dir: str | None = flag(None, "Folder holding the dataset's files (offline MNIST etc.).")
    samples: str | None = flag(None, "A generated DATASET dir (default: draw from RUN's decoder).")
    iwae_k: int | None = flag(None, "IWAE NLL with K importance samples per image (e.g. 5000).")
    fid: bool = flag(False, "FID, KID, precision/recall (+ per class).")
    cas: bool = flag(False, "Classification accuracy score and label fidelity.")
    inception_weights: str | None = flag(
        None,
        "torch-fidelity InceptionV3 weights (.pth) for FID instead of the judge CNN; "
        "implies --fid.",
    )
    num_samples: int | None = flag(
        None, "Generated images to score (default: the test split's size)."
    )
    seed: int = flag(0, "Seed for sampling z, the ELBO and IWAE.")
    batch_size: int = flag(256, "Images per batch.")
    binarized_test: bool = flag(
        False,
        "Score likelihoods on the test split binarized once (the published tables' setting), "
        "also for a Bernoulli model trained on grey values.",
    )
    device: str = flag("auto", "auto, cpu or cuda[:N].")
    cache_dir: str | None = flag(
        None, "Judge cache (default $VAEGEN_CACHE/judges or ~/.cache/...)."
    )
    judge: str | None = flag(
        None, "A JUDGE folder from `vaegen judge`, used instead of the cache (same dataset)."
    )
    # None: the judge's own default (eval.judge.JudgeSpec.steps), the judge `vaegen judge` writes
    judge_steps: int | None = flag(None, "Training steps of a judge not in the cache.", cli=False)
    kid_subsets: int = flag(100, "KID subsets.", cli=False)
    figures: bool = flag(True, "Draw REPORT/figures/.", cli=False)

    def __post_init__(self) -> None:
        if self.iwae_k is not None and self.iwae_k < 1:
            raise VaegenError(f"--iwae-k must be >= 1; got {self.iwae_k}")
        if self.num_samples is not None and self.num_samples < 2:
            raise VaegenError(f"--num-samples must be >= 2; got {self.num_samples}")
        if self.batch_size < 1:
            raise VaegenError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.seed < 0:
            raise VaegenError(f"--seed must be >= 0; got {self.seed}")
        if (self.judge_steps is not None and self.judge_steps < 1) or self.kid_subsets < 1:
            raise VaegenError("judge steps and KID subsets must be >= 1")
        if self.judge is not None and not Path(self.judge).exists():
            raise VaegenError(f"--judge {self.judge} is not a folder written by `vaegen judge`")
        if self.inception_weights is not None and not Path(self.inception_weights).is_file():
            raise VaegenError(f"--inception-weights {self.inception_weights} is not a file")

    @property
    def wants_fid(self) -> bool:
        return self.fid or self.inception_weights is not None
