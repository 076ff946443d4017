"""`evaluate(run_dir, out, options)`: every eval step in order, timed, into REPORT/.

Steps: load RUN and the real test split -> generated set (--samples DATASET, or the decoder) ->
likelihood (ELBO terms, reconstruction errors) -> IWAE (--iwae-k) -> judge (cached) ->
FID/KID/PR (--fid) -> CAS and label fidelity (--cas) -> memorization (--samples) -> figures ->
metrics.json + report.html.
Each step records its own section of metrics.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval import likelihood as lik
from eval.device import default_max_decodes, resolve_device
from eval.figures import draw_report_figures
from eval.judge import Judge, JudgeSpec, get_judge
from eval.loading import LoadedRun, load_run
from eval.memorization import ClosestPairs, check_samples
from eval.metrics_keys import empty_metrics
from eval.options import EvalOptions
from eval.report import write_html, write_metrics
from eval.samples import SampleSet, read_samples, sample_from_decoder
from vaegen import __version__
from vaegen.atomic import ensure_writable_dir
from vaegen.dataset_reader import DatasetError
from vaegen.dirlock import hold_directory
from vaegen.errors import VaegenError
from vaegen.options import build
from vaegen.telemetry import EVAL_SECONDS

GRID_PER_CLASS = 10


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


@dataclass(frozen=True)
class _Context:
    """What every step reads, and the metrics dict each step fills its section of."""

    opts: EvalOptions
    device: torch.device
    run: LoadedRun
    metrics: dict[str, Any]
    timed: _Timer


def evaluate(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: EvalOptions | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Evaluate RUN into REPORT `out`; returns the metrics dict written to metrics.json.

    Pass `options`, or EvalOptions' fields by name (`vaegen eval`'s options). Invalid ones raise
    VaegenError before anything is written.
    """
    if options is None:
        options = build(EvalOptions, fields)
    elif fields:
        raise TypeError("evaluate takes EvalOptions or its fields, not both")
    with hold_directory(out, "vaegen eval"):  # one writer per REPORT
        return _evaluate(run_dir, out, options)


def _evaluate(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], opts: EvalOptions
) -> dict[str, Any]:
    device = resolve_device(opts.device)
    out = ensure_writable_dir(out)
    metrics = empty_metrics()
    timed = _Timer(metrics["timings_seconds"])
    total_start = time.perf_counter()
    with timed("load"):
        run = load_run(run_dir, opts, device)
    metrics["vaegen_version"] = __version__
    metrics["run"].update(run.run_section(run_dir))
    metrics["data"].update(run.real.section())
    ctx = _Context(opts, device, run, metrics, timed)

    # Generated set first: a bad --samples directory fails before any long step.
    sample_set = _generated_set_step(ctx)
    mu = _likelihood_step(ctx)
    _classifier_step(ctx)
    judge = _judge_step(ctx) if sample_set is not None else None
    if opts.wants_fid and sample_set is not None:
        with timed("fid"):
            metrics["fid"].update(_fidelity(ctx, judge, sample_set))
    if opts.cas and sample_set is not None and judge is not None:
        _cas_step(ctx, judge, sample_set)
    pairs = _memorization_step(ctx, judge, sample_set)
    figure_paths: dict[str, str | None] = {}
    if opts.figures:
        with timed("figures"):
            figure_paths = _figures_step(ctx, out, mu, sample_set, pairs)

    total = time.perf_counter() - total_start
    metrics["timings_seconds"]["total"] = total
    EVAL_SECONDS.labels(metric="total").observe(total)
    if opts.samples is not None:
        _card_step(opts.samples, metrics)
    write_metrics(out, metrics)
    write_html(out, metrics, figure_paths)
    return metrics


def generation_settings(dataset_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The sampling temperature and the judge filter a DATASET was generated with (its manifest:
    a missing temperature means the default 1.0, a missing judge block no filter)."""
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    judge = manifest.get("judge")
    judge_filter = None
    if judge is not None:
        judge_filter = {
            "min_confidence": judge.get("min_confidence"),
            "min_acceptance": judge.get("min_acceptance"),
            "test_accuracy": judge.get("test_accuracy"),
            "acceptance_rate": judge.get("acceptance_rate"),
        }
    return {
        "temperature": float(manifest.get("spec", {}).get("temperature", 1.0)),
        "judge_filter": judge_filter,
    }


def _card_step(dataset_dir: str, metrics: dict[str, Any]) -> None:
    """Put the scores on DATASET/README.md; an incomplete dataset has no card to update."""
    from vaegen.dataset_card import update_card_scores

    try:
        update_card_scores(dataset_dir, metrics)
    except DatasetError as exc:
        metrics["notes"].append(f"dataset card not updated: {exc}")


def _generated_set_step(ctx: _Context) -> SampleSet | None:
    opts = ctx.opts
    if not (opts.wants_fid or opts.cas or opts.samples):
        return None
    with ctx.timed("samples"):
        sample_set = _generated_set(ctx)
    ctx.metrics["samples"].update(
        source=sample_set.source,
        format=sample_set.format,
        num_samples=int(len(sample_set.labels)),
        labeled=sample_set.labeled,
        class_counts=sample_set.class_counts(),
        seed=sample_set.seed,
    )
    if opts.samples is not None:
        ctx.metrics["samples"].update(generation_settings(opts.samples))
    notes: list[str] = ctx.metrics["notes"]
    if not sample_set.labeled:
        notes.append(
            "the generated samples carry no labels (a plain VAE's): CAS, label fidelity "
            "and per-class FID do not apply"
        )
    return sample_set


def _generated_set(ctx: _Context) -> SampleSet:
    opts, run = ctx.opts, ctx.run
    class_names = run.real.class_names
    if opts.samples is not None:
        # Every row (or --num-samples): the memorization check scores each one.
        shape = tuple(run.info.config.image_shape)
        return read_samples(opts.samples, shape, class_names, limit=opts.num_samples)
    return sample_from_decoder(
        run.model,
        opts.num_samples or len(run.real.test),
        class_names,
        seed=opts.seed,
        device=ctx.device,
        batch_size=max(opts.batch_size, 1024),
    )


def _likelihood_step(ctx: _Context) -> np.ndarray:
    """ELBO terms and reconstruction errors, then IWAE; returns the test split's encoder means."""
    opts, real, model = ctx.opts, ctx.run.real, ctx.run.model
    labels = real.test.labels
    common = {"device": ctx.device, "batch_size": opts.batch_size, "seed": opts.seed}
    with ctx.timed("likelihood"):
        res = lik.evaluate_likelihood(model, real.targets, labels, **common)
    iwae = None
    if opts.iwae_k:
        with ctx.timed("iwae"):
            max_decodes = default_max_decodes(ctx.device)
            iwae = lik.evaluate_iwae(
                model, real.targets, labels, opts.iwae_k, **common, max_decodes=max_decodes
            )
    num_pixels = ctx.run.info.config.num_pixels
    summary = lik.summarize(res, iwae, opts.iwae_k, labels, real.class_names, num_pixels)
    ctx.metrics["likelihood"].update(summary)
    corrupt = (ctx.run.info.train.get("loss") or {}).get("corrupt")
    if corrupt:  # a denoising run: also score reconstructions from inputs corrupted as in training
        with ctx.timed("likelihood"):
            ctx.metrics["likelihood"]["corrupted_reconstruction"] = lik.corrupted_reconstruction(
                model, real.targets, labels, corrupt, **common
            )
    return res.mu


def _classifier_step(ctx: _Context) -> None:
    """M2's q(y|x) on the real test split, fed as in training (binarized only if trained so)."""
    if getattr(ctx.run.model, "classifier", None) is None:
        return
    from trainer.inputs import evaluation_inputs
    from trainer.semisupervised import classifier_accuracy

    real, train = ctx.run.real, ctx.run.info.train
    with ctx.timed("likelihood"):
        inputs = evaluation_inputs(real.test.images, bool(train.get("binarize")))
        acc, per_class = classifier_accuracy(
            ctx.run.model, inputs, real.test.labels, real.class_names, ctx.opts.batch_size
        )
    ctx.metrics["classifier"].update(
        test_accuracy=acc,
        test_accuracy_per_class=per_class,
        labels_per_class=train.get("labels_per_class"),
    )


def _judge_step(ctx: _Context) -> Judge | None:
    """The dataset's judge (trained once, then cached) for CAS, judge-feature FID, --samples."""
    opts, real = ctx.opts, ctx.run.real
    if not (opts.cas or opts.samples or (opts.wants_fid and opts.inception_weights is None)):
        return None
    with ctx.timed("judge"):
        fingerprint = real.fingerprint()
        steps = {} if opts.judge_steps is None else {"steps": opts.judge_steps}
        jspec = JudgeSpec(
            image_shape=tuple(ctx.run.info.config.image_shape),
            num_classes=real.test.num_classes,
            **steps,
        )
        judge = get_judge(
            jspec,
            fingerprint,
            real.load_train,
            real.test.images,
            real.test.labels,
            real.class_names,
            ctx.device,
            cache_dir=opts.cache_dir,
            artifact=opts.judge,
        )
    ctx.metrics["data"]["fingerprint"] = fingerprint
    ctx.metrics["judge"].update(
        path=str(judge.weights_path),
        cached=judge.cached,
        test_accuracy=judge.test_accuracy,
        spec_hash=judge.spec.spec_hash(),
    )
    return judge


def _fidelity(ctx: _Context, judge: Judge | None, sample_set: SampleSet) -> dict[str, Any]:
    from eval import fid

    opts, real = ctx.opts, ctx.run.real
    if opts.inception_weights is not None:
        extractor = fid.inception_extractor(opts.inception_weights)
    else:
        if judge is None or judge.weights_path is None:
            raise VaegenError("FID needs the judge's weights file")
        extractor = fid.judge_extractor(judge.weights_path)
    labeled = sample_set.labeled
    result = fid.fidelity_metrics(
        real.test.images,
        sample_set.images,
        extractor,
        real_labels=real.test.labels if labeled else None,
        fake_labels=sample_set.labels if labeled else None,
        class_names=real.class_names if labeled else None,
        cuda=ctx.device.type == "cuda",
        batch_size=opts.batch_size,
        kid_subsets=opts.kid_subsets,
        seed=opts.seed,
    )
    return dataclasses.asdict(result)


def _cas_step(ctx: _Context, judge: Judge, sample_set: SampleSet) -> None:
    """CAS and label fidelity of labeled samples; only the judge's own accuracy otherwise."""
    if not sample_set.labeled:
        ctx.metrics["cas"].update(
            real_accuracy=judge.test_accuracy,
            real_accuracy_per_class=judge.test_accuracy_per_class,
        )
        return
    from eval.cas import classification_accuracy_score

    test = ctx.run.real.test
    with ctx.timed("cas"):
        cas = classification_accuracy_score(
            judge,
            sample_set.images,
            sample_set.labels,
            test.images,
            test.labels,
            ctx.run.real.class_names,
            ctx.device,
        )
    ctx.metrics["cas"].update(dataclasses.asdict(cas))


def _memorization_step(
    ctx: _Context, judge: Judge | None, sample_set: SampleSet | None
) -> ClosestPairs | None:
    """--samples: near copies of real training images, in the judge's features."""
    if ctx.opts.samples is None or sample_set is None or judge is None:
        return None
    if judge.weights_path is None:
        ctx.metrics["notes"].append("memorization check skipped: the judge has no weights file")
        return None
    with ctx.timed("memorization"):
        section, pairs = check_samples(
            ctx.run.real,
            judge.weights_path,
            sample_set,
            device=ctx.device,
            batch_size=ctx.opts.batch_size,
        )
    ctx.metrics["memorization"].update(section)
    return pairs


def _figures_step(
    ctx: _Context,
    out: Path,
    mu: np.ndarray,
    sample_set: SampleSet | None,
    pairs: ClosestPairs | None,
) -> dict[str, str | None]:
    run, seed = ctx.run, ctx.opts.seed
    if sample_set is None:
        cfg = run.info.config
        per = GRID_PER_CLASS * (cfg.num_classes if cfg.conditional else GRID_PER_CLASS)
        sample_set = sample_from_decoder(
            run.model, per, run.real.class_names, seed=seed, device=ctx.device
        )
    grid = (sample_set.images, sample_set.labels)
    return draw_report_figures(out, run, mu, grid, ctx.device, seed, pairs)
