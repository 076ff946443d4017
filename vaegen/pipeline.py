"""`vaegen pipeline`: train -> export -> generate -> eval from one TOML file.

Every artifact lands under the config's `out` directory:

    OUT/run/          RUN (model/, checkpoints/, train_log.jsonl, export/decoder.onnx)
    OUT/dataset/      DATASET (manifest.json + shards)
    OUT/report/       REPORT (metrics.json, report.html, figures/)
    OUT/pipeline.json what each stage was run with, so an unchanged stage is skipped

A stage is skipped when its output exists and its stamp (its own section plus the stamps of the
stages it reads) matches; `force` reruns everything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaegen.atomic import ensure_writable_dir, write_json_atomic
from vaegen.errors import VaegenError

STAGES = ("train", "export", "generate", "eval")
STATE_FILE = "pipeline.json"
SPEC_KEYS = ("num_samples", "class_counts", "classes", "seed", "shard_size", "batch_size",
             "format", "encoding", "temperature", "judge", "min_confidence")  # fmt: skip
RUN_KEYS = ("workers", "gpus_per_worker", "metrics_port", "metrics_host", "pushgateway",
            "min_acceptance")  # fmt: skip


@dataclass(frozen=True)
class PipelineConfig:
    out: Path
    train: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)  # noqa: A003 - the stage's name

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def onnx_path(self) -> Path:
        return self.run_dir / "export" / "decoder.onnx"

    @property
    def dataset_dir(self) -> Path:
        return self.out / "dataset"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"


def _check_keys(section: str, values: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise VaegenError(
            f"[{section}] has unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}"
        )


def load_config(path: str | Path) -> PipelineConfig:
    """Parse and check the TOML file; relative paths are relative to the current directory."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise VaegenError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VaegenError(f"{path} is not valid TOML: {exc}") from None
    _check_keys("top level", raw, {"out", *STAGES})
    if "out" not in raw:
        raise VaegenError(f'{path} needs a top-level `out = "DIR"`')
    # Both modules are torch-free: listing keys imports no stage's heavy dependencies.
    from eval.options import EvalOptions
    from trainer.options import CONFIGS
    from vaegen.options import flag_names

    sections = {stage: raw.get(stage, {}) for stage in STAGES}
    for stage, values in sections.items():
        if not isinstance(values, dict):
            raise VaegenError(f"[{stage}] must be a table")
    _check_keys("train", sections["train"], set(flag_names(*CONFIGS)))
    _check_keys("export", sections["export"], {"fp16", "optimize"})
    _check_keys("generate", sections["generate"], set(SPEC_KEYS) | set(RUN_KEYS))
    _check_keys("eval", sections["eval"], set(flag_names(EvalOptions)) - {"samples"})
    return PipelineConfig(out=Path(raw["out"]), **sections)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_stamps(cfg: PipelineConfig) -> dict[str, str]:
    """Each stage's stamp covers its own section and everything upstream of it."""
    stamps: dict[str, str] = {}
    upstream = ""
    for stage in STAGES:
        upstream = _digest({"stage": stage, "section": getattr(cfg, stage), "up": upstream})
        stamps[stage] = upstream
    return stamps


def _read_state(out: Path) -> dict[str, str]:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _outputs_exist(cfg: PipelineConfig, stage: str) -> bool:
    return {
        "train": (cfg.run_dir / "model" / "config.json").is_file(),
        "export": cfg.onnx_path.is_file(),
        "generate": (cfg.dataset_dir / "manifest.json").is_file(),
        "eval": (cfg.report_dir / "metrics.json").is_file(),
    }[stage]


def _run_train(cfg: PipelineConfig, ray_address: str | None) -> str:
    from trainer.options import build_configs
    from trainer.run import train

    model_cfg, train_cfg = build_configs(**cfg.train)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)  # stale: its stamp no longer matches
    result = train(model_cfg, train_cfg, cfg.run_dir, ray_address=ray_address)
    return f"test ELBO {result.metrics.get('test_elbo', float('nan')):.2f} nats"


def _run_export(cfg: PipelineConfig, ray_address: str | None) -> str:
    from exporter.export import export_decoder

    result = export_decoder(cfg.run_dir, cfg.onnx_path, **cfg.export)
    worst = max(r.max_mean_diff for r in result.parity)
    return f"{result.path} ({result.precision}, parity max |diff| {worst:.2e})"


def _run_generate(cfg: PipelineConfig, ray_address: str | None) -> str:
    from workers.job import run_generation
    from workers.options import GenerateOptions
    from workers.spec import build_spec, default_batch_size

    options = dict(cfg.generate)
    spec_kwargs = {k: options.pop(k) for k in SPEC_KEYS if k in options}
    spec_kwargs.setdefault("num_samples", 10_000)
    spec_kwargs.setdefault("batch_size", default_batch_size(options.get("gpus_per_worker", 0.0)))
    num_samples = spec_kwargs.pop("num_samples")
    spec = build_spec(str(cfg.onnx_path), num_samples, **spec_kwargs)
    run_options = GenerateOptions(overwrite=True, ray_address=ray_address, **options)
    manifest = run_generation(spec, cfg.dataset_dir, run_options)
    return f"{manifest['num_rows']} samples in {len(manifest['shards'])} shards"


def _run_eval(cfg: PipelineConfig, ray_address: str | None) -> str:
    from eval.options import EvalOptions
    from eval.run import evaluate
    from vaegen.options import build

    options = build(EvalOptions, {**cfg.eval, "samples": str(cfg.dataset_dir)})
    evaluate(cfg.run_dir, cfg.report_dir, options)
    return str(cfg.report_dir / "report.html")


RUNNERS: dict[str, Callable[[PipelineConfig, str | None], str]] = {
    "train": _run_train,
    "export": _run_export,
    "generate": _run_generate,
    "eval": _run_eval,
}


def run_pipeline(
    cfg: PipelineConfig,
    *,
    force: bool = False,
    ray_address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run the stages in order; returns stage -> "ran"/"skipped"."""
    ensure_writable_dir(cfg.out)
    stamps = stage_stamps(cfg)
    state = _read_state(cfg.out)
    outcome: dict[str, str] = {}
    rerun = force
    for stage in STAGES:
        fresh = state.get(stage) == stamps[stage] and _outputs_exist(cfg, stage)
        if fresh and not rerun:
            log(f"[{stage}] up to date, skipped")
            outcome[stage] = "skipped"
            continue
        rerun = True  # everything downstream of a rerun stage reruns too
        state.pop(stage, None)
        write_json_atomic(cfg.out / STATE_FILE, state)
        started = time.perf_counter()
        log(f"[{stage}] running")
        summary = RUNNERS[stage](cfg, ray_address)
        state[stage] = stamps[stage]
        write_json_atomic(cfg.out / STATE_FILE, state)
        log(f"[{stage}] done in {time.perf_counter() - started:.1f} s: {summary}")
        outcome[stage] = "ran"
    return outcome
