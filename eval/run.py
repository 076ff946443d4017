"""`evaluate(run_dir, out, ...)`: every eval step in order, timed, into REPORT/.

Steps: load RUN and the real test split -> likelihood (ELBO terms, reconstruction errors) ->
IWAE (--iwae-k) -> generated set (--samples DATASET, or the decoder) -> judge (cached) ->
FID/KID/PR (--fid) -> CAS and label fidelity (--cas) -> figures -> metrics.json + report.html.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval import figures as figs
from eval import likelihood as lik
from eval.device import default_max_decodes, resolve_device
from eval.judge import Judge, JudgeSpec, get_judge
from eval.metrics_keys import empty_metrics
from eval.report import write_html, write_metrics
from eval.samples import SampleSet, read_samples, sample_from_decoder
from trainer.inputs import evaluation_inputs
from vaegen import __version__
from vaegen.atomic import ensure_writable_dir
from vaegen.errors import VaegenError
from vaegen.telemetry import EVAL_SECONDS

TRAIN_LOG = "train_log.jsonl"
GRID_PER_CLASS = 10


@dataclass(frozen=True)
class EvalOptions:
    """What `vaegen eval` was asked to do. See eval/cli.py for each option's meaning."""

    dataset: str | None = None
    data_dir: str | None = None
    samples: str | None = None
    iwae_k: int | None = None
    fid: bool = False
    cas: bool = False
    inception_weights: str | None = None
    num_samples: int | None = None
    seed: int = 0
    batch_size: int = 256
    device: str | None = None
    cache_dir: str | None = None
    judge_steps: int = 2000
    kid_subsets: int = 100
    figures: bool = True

    def __post_init__(self) -> None:
        if self.iwae_k is not None and self.iwae_k < 1:
            raise VaegenError(f"--iwae-k must be >= 1; got {self.iwae_k}")
        if self.num_samples is not None and self.num_samples < 2:
            raise VaegenError(f"--num-samples must be >= 2; got {self.num_samples}")
        if self.batch_size < 1:
            raise VaegenError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.seed < 0:
            raise VaegenError(f"--seed must be >= 0; got {self.seed}")
        if self.judge_steps < 1 or self.kid_subsets < 1:
            raise VaegenError("judge steps and KID subsets must be >= 1")
        if self.inception_weights is not None and not Path(self.inception_weights).is_file():
            raise VaegenError(f"--inception-weights {self.inception_weights} is not a file")

    @property
    def wants_fid(self) -> bool:
        return self.fid or self.inception_weights is not None


class _Timer:
    """Wall time per step, into timings_seconds and the vaegen_eval_seconds histogram."""

    def __init__(self, timings: dict[str, float | None]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, metric: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[metric] = (self.timings.get(metric) or 0.0) + seconds
            EVAL_SECONDS.labels(metric=metric).observe(seconds)


def _run_root(model_dir: Path) -> Path:
    return model_dir.parent if model_dir.name == "model" else model_dir


def _dataset_args(info: Any, opts: EvalOptions) -> tuple[str, str | None, int | None]:
    """(spec, data_dir, image_size): RUN's training data unless --dataset/--data-dir say."""
    train = info.train or {}
    spec = opts.dataset or train.get("dataset") or info.dataset.get("name")
    if not spec:
        raise VaegenError("RUN's config names no dataset; pass --dataset")
    data_dir = opts.data_dir
    if data_dir is None and opts.dataset in (None, train.get("dataset")):
        data_dir = train.get("data_dir")
    return str(spec), data_dir, train.get("image_size")


def _check_dataset(test: Any, cfg: Any, spec: str) -> list[str]:
    if tuple(test.image_shape) != tuple(cfg.image_shape):
        raise VaegenError(
            f"dataset {spec} has {list(test.image_shape)} images, the model "
            f"{list(cfg.image_shape)}; pass the training --dataset/--data-dir"
        )
    if cfg.conditional and test.num_classes != cfg.num_classes:
        raise VaegenError(
            f"dataset {spec} has {test.num_classes} classes, the CVAE {cfg.num_classes}"
        )
    return list(test.class_names)


def evaluate(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    samples: str | None = None,
    iwae_k: int | None = None,
    fid: bool = False,
    cas: bool = False,
    inception_weights: str | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
    cache_dir: str | None = None,
    judge_steps: int = 2000,
    kid_subsets: int = 100,
    figures: bool = True,
) -> dict[str, Any]:
    """Evaluate RUN into REPORT `out`; returns the metrics dict written to metrics.json.

    The options mirror `vaegen eval`'s (see EvalOptions); invalid ones raise VaegenError before
    anything is written.
    """
    return _evaluate(
        run_dir,
        out,
        EvalOptions(
            dataset=dataset,
            data_dir=data_dir,
            samples=samples,
            iwae_k=iwae_k,
            fid=fid,
            cas=cas,
            inception_weights=inception_weights,
            num_samples=num_samples,
            seed=seed,
            batch_size=batch_size,
            device=device,
            cache_dir=cache_dir,
            judge_steps=judge_steps,
            kid_subsets=kid_subsets,
            figures=figures,
        ),
    )


def _evaluate(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], opts: EvalOptions
) -> dict[str, Any]:
    from trainer.checkpoint import load_model
    from trainer.datasets import dataset_fingerprint, load_dataset

    device = resolve_device(opts.device)
    out = ensure_writable_dir(out)
    metrics = empty_metrics()
    timings = metrics["timings_seconds"]
    timed = _Timer(timings)
    notes: list[str] = metrics["notes"]
    total_start = time.perf_counter()

    with timed("load"):
        model, info = load_model(run_dir)
        cfg = info.config
        model = model.to(device).eval()
        spec, data_dir, image_size = _dataset_args(info, opts)
        test = load_dataset(spec, "test", data_dir=data_dir, image_size=image_size)
        class_names = _check_dataset(test, cfg, spec)
        binarize = bool(info.train.get("binarize")) and cfg.likelihood == "bernoulli"
        targets = evaluation_inputs(test.images, binarize)

    metrics["vaegen_version"] = __version__
    metrics["run"].update(
        run_dir=str(run_dir),
        model=cfg.model,
        arch=cfg.arch,
        likelihood=cfg.likelihood,
        latent_dim=cfg.latent_dim,
        image_shape=list(cfg.image_shape),
        class_names=info.class_names or class_names,
        train_dataset=info.train.get("dataset"),
        binarize=bool(info.train.get("binarize")),
    )
    metrics["data"].update(dataset=spec, split="test", num_images=len(test), binarized=binarize)

    # Generated set first: a bad --samples directory fails before any long step.
    sample_set: SampleSet | None = None
    if opts.wants_fid or opts.cas or opts.samples:
        with timed("samples"):
            sample_set = _generated_set(model, info, opts, len(test), class_names, device)
        metrics["samples"].update(
            source=sample_set.source,
            format=sample_set.format,
            num_samples=int(len(sample_set.labels)),
            labeled=sample_set.labeled,
            class_counts=sample_set.class_counts(),
            seed=sample_set.seed,
        )
        if opts.samples and not (opts.wants_fid or opts.cas):
            notes.append(
                "--samples without --fid/--cas: only the rows for the sample grid were read"
            )
        if not sample_set.labeled:
            notes.append(
                "the generated samples carry no labels (a plain VAE's): CAS, label fidelity "
                "and per-class FID do not apply"
            )

    with timed("likelihood"):
        res = lik.evaluate_likelihood(
            model, targets, test.labels, device=device, batch_size=opts.batch_size, seed=opts.seed
        )
    iwae = None
    if opts.iwae_k:
        with timed("iwae"):
            iwae = lik.evaluate_iwae(
                model,
                targets,
                test.labels,
                opts.iwae_k,
                device=device,
                batch_size=opts.batch_size,
                seed=opts.seed,
                max_decodes=default_max_decodes(device),
            )
    metrics["likelihood"].update(
        lik.summarize(res, iwae, opts.iwae_k, test.labels, class_names, cfg.num_pixels)
    )

    judge: Judge | None = None
    needs_judge = opts.cas or (opts.wants_fid and opts.inception_weights is None)
    if needs_judge and sample_set is not None:
        with timed("judge"):
            fingerprint = dataset_fingerprint(spec, data_dir=data_dir, image_size=image_size)
            jspec = JudgeSpec(
                image_shape=tuple(cfg.image_shape),
                num_classes=test.num_classes,
                steps=opts.judge_steps,
            )

            def load_train() -> tuple[np.ndarray, np.ndarray]:
                train = load_dataset(spec, "train", data_dir=data_dir, image_size=image_size)
                return train.images, train.labels

            judge = get_judge(
                jspec,
                fingerprint,
                load_train,
                test.images,
                test.labels,
                class_names,
                device,
                cache_dir=opts.cache_dir,
            )
        metrics["data"]["fingerprint"] = fingerprint
        metrics["judge"].update(
            path=str(judge.weights_path),
            cached=judge.cached,
            test_accuracy=judge.test_accuracy,
            spec_hash=jspec.spec_hash(),
        )

    if opts.wants_fid and sample_set is not None:
        with timed("fid"):
            metrics["fid"].update(_fidelity(opts, judge, test, sample_set, class_names, device))

    if opts.cas and sample_set is not None and judge is not None:
        if sample_set.labeled:
            from eval.cas import classification_accuracy_score

            with timed("cas"):
                cas = classification_accuracy_score(
                    judge,
                    sample_set.images,
                    sample_set.labels,
                    test.images,
                    test.labels,
                    class_names,
                    device,
                )
            metrics["cas"].update(dataclasses.asdict(cas))
        else:
            metrics["cas"].update(
                real_accuracy=judge.test_accuracy,
                real_accuracy_per_class=judge.test_accuracy_per_class,
            )

    figure_paths: dict[str, str | None] = {}
    if opts.figures:
        with timed("figures"):
            figure_paths = _figures(
                out, model, info, test, targets, res, sample_set, class_names, device, opts.seed
            )

    timings["total"] = time.perf_counter() - total_start
    EVAL_SECONDS.labels(metric="total").observe(timings["total"])
    write_metrics(out, metrics)
    write_html(out, metrics, figure_paths)
    return metrics


def _generated_set(
    model: torch.nn.Module,
    info: Any,
    opts: EvalOptions,
    num_test: int,
    class_names: list[str],
    device: torch.device,
) -> SampleSet:
    if opts.samples is not None:
        # Only a sample grid is drawn from --samples without --fid/--cas: read a few rows.
        limit = opts.num_samples
        if not (opts.wants_fid or opts.cas):
            limit = GRID_PER_CLASS * GRID_PER_CLASS * max(len(class_names), 1)
        return read_samples(opts.samples, tuple(info.config.image_shape), class_names, limit=limit)
    return sample_from_decoder(
        model,
        opts.num_samples or num_test,
        class_names,
        seed=opts.seed,
        device=device,
        batch_size=max(opts.batch_size, 1024),
    )


def _fidelity(
    opts: EvalOptions,
    judge: Judge | None,
    test: Any,
    sample_set: SampleSet,
    class_names: list[str],
    device: torch.device,
) -> dict[str, Any]:
    from eval import fid

    if opts.inception_weights is not None:
        extractor = fid.inception_extractor(opts.inception_weights)
    else:
        if judge is None or judge.weights_path is None:
            raise VaegenError("FID needs the judge's weights file")
        extractor = fid.judge_extractor(judge.weights_path)
    labeled = sample_set.labeled
    result = fid.fidelity_metrics(
        test.images,
        sample_set.images,
        extractor,
        real_labels=test.labels if labeled else None,
        fake_labels=sample_set.labels if labeled else None,
        class_names=class_names if labeled else None,
        cuda=device.type == "cuda",
        batch_size=opts.batch_size,
        kid_subsets=opts.kid_subsets,
        seed=opts.seed,
    )
    return dataclasses.asdict(result)


def _figures(
    out: Path,
    model: torch.nn.Module,
    info: Any,
    test: Any,
    targets: np.ndarray,
    res: lik.LikelihoodResult,
    sample_set: SampleSet | None,
    class_names: list[str],
    device: torch.device,
    seed: int,
) -> dict[str, str | None]:
    """Draw every figure; returns caption -> path relative to `out` (None when unavailable)."""
    fig_dir = out / figs.FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    rel = {}
    cfg = info.config

    grid_set = sample_set
    if grid_set is None:
        per = GRID_PER_CLASS * (cfg.num_classes if cfg.conditional else GRID_PER_CLASS)
        grid_set = sample_from_decoder(model, per, class_names, seed=seed, device=device)
    figs.sample_grid(grid_set.images, grid_set.labels, class_names, fig_dir / "samples.png")
    rel["Samples per class"] = f"{figs.FIGURES_DIR}/samples.png"

    rng = np.random.default_rng(seed)
    n = min(10, len(targets))
    pick = rng.choice(len(targets), size=n, replace=False)
    recon = figs.reconstructions(model, targets[pick], test.labels[pick], device)
    figs.image_rows(
        [targets[pick], recon],
        ["input", "reconstruction"],
        "reconstructions (z = mu)",
        fig_dir / "reconstructions.png",
    )
    rel["Reconstructions beside inputs"] = f"{figs.FIGURES_DIR}/reconstructions.png"

    pairs = min(5, len(targets) // 2)
    if pairs:
        order = rng.choice(len(targets), size=2 * pairs, replace=False)
        a, b = order[:pairs], order[pairs:]
        rows = figs.interpolations(
            model, targets[a], targets[b], test.labels[a], test.labels[b], device
        )
        figs.image_rows(
            rows,
            [f"{class_names[test.labels[i]]}" for i in a],
            "latent interpolations",
            fig_dir / "interpolations.png",
        )
        rel["Latent interpolations"] = f"{figs.FIGURES_DIR}/interpolations.png"

    figs.latent_scatter(res.mu, test.labels, class_names, fig_dir / "latent_scatter.png")
    rel["Latent means, PCA, by class"] = f"{figs.FIGURES_DIR}/latent_scatter.png"

    log_rows = figs.read_train_log(_run_root(info.model_dir) / TRAIN_LOG)
    curves = figs.training_curves(log_rows, fig_dir / "training_curves.png")
    rel["Training curves"] = f"{figs.FIGURES_DIR}/training_curves.png" if curves else None
    return rel
