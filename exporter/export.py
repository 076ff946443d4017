"""`export_decoder`: checkpoint -> verified decoder.onnx (and optionally decoder.opt.onnx).

Every file is written under a temporary name, checked (onnx checker, signature, parity against
torch) and only then renamed; a failed check leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter._deps import require
from exporter.graph import OPSET, check_graph, check_signature, export_onnx
from exporter.int8 import Int8Options, Int8Result, int8_writer
from exporter.metadata import attach_metadata, build_metadata, read_metadata
from exporter.optimize import save_optimized
from exporter.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ParityReport,
    Tolerance,
    check_parity,
)
from trainer.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_model, sha256_file
from vaegen import __version__
from vaegen.atomic import atomic_path, ensure_writable_dir
from vaegen.errors import InternalFailure, VaegenError

DEFAULT_NAME = "decoder.onnx"
OPTIMIZED_SUFFIX = ".opt.onnx"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    optimized_path: Path | None
    precision: str  # "fp32" or "fp16"
    opset: int
    metadata: dict[str, str]
    parity: tuple[ParityReport, ...]
    size_bytes: int
    seconds: float
    int8: Int8Result | None = None  # decoder.int8.onnx and its quality check, with --int8


def default_output(model_dir: Path) -> Path:
    """RUN/export/decoder.onnx: beside RUN/model, never inside it (that folder is fixed)."""
    return model_dir.parent / "export" / DEFAULT_NAME


def optimized_path_for(out: Path) -> Path:
    """decoder.onnx -> decoder.opt.onnx"""
    return out.with_name(out.name[: -len(".onnx")] + OPTIMIZED_SUFFIX)


def _check_out(out: Path) -> Path:
    if out.suffix != ".onnx" or out.name.endswith(OPTIMIZED_SUFFIX):
        raise VaegenError(f"--out must name a .onnx file (not *{OPTIMIZED_SUFFIX}); got {out}")
    if out.is_dir():
        raise VaegenError(f"--out {out} is a directory; give a file name such as {DEFAULT_NAME}")
    ensure_writable_dir(out.parent)
    return out


def _verified_source_sha(model_dir: Path) -> str:
    """sha256 of the weights, checked against the one config.json recorded when it was saved,
    so a weights file swapped for another of the same shapes is refused too."""
    digest = sha256_file(model_dir / WEIGHTS_FILE)
    recorded = json.loads((model_dir / CONFIG_FILE).read_text()).get("weights_sha256")
    if recorded is not None and recorded != digest:
        raise VaegenError(
            f"{model_dir / WEIGHTS_FILE} does not match config.json (weights_sha256 differs)"
        )
    return digest


def _publish_mode(path: Path) -> None:
    """mkstemp creates 0600 files; an artifact is for other users and containers to read."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _verify(path: Path, model: Any, label: str, tolerance: Tolerance) -> ParityReport:
    check_graph(path, label)
    report = check_parity(model, path, tolerance, label=label)
    if not report.passed:
        raise InternalFailure(f"{report.summary()}; nothing was written")
    return report


def export_decoder(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    fp16: bool = False,
    optimize: bool = False,
    int8: Int8Options | None = None,
) -> ExportResult:
    """Export RUN's decoder to ONNX and prove it matches torch; see DESIGN.md "decoder.onnx".

    Bad input (a corrupt, truncated, mismatched or pickled checkpoint; a bad --out) raises
    VaegenError; a failed check of our own output raises InternalFailure and writes nothing.
    """
    start = time.perf_counter()
    if fp16 and optimize:
        raise VaegenError(
            "--optimize writes a CPU-optimized fp32 graph; it does not combine with --fp16"
        )
    if fp16 and int8 is not None:
        raise VaegenError("--int8 quantizes the fp32 graph; it does not combine with --fp16")
    model, info = load_model(run_dir)
    precision = "fp16" if fp16 else "fp32"
    props = _metadata(model, info, precision)
    out_path = _check_out(Path(out) if out is not None else default_output(info.model_dir))
    proto = export_onnx(model, fp16=fp16)
    check_signature(proto, model.cfg)
    attach_metadata(proto, props)
    int8_step = None if int8 is None else int8_writer(out_path, props, info, int8)
    written = _write_verified(proto, model, out_path, precision, optimize, int8_step)
    return ExportResult(
        path=out_path,
        optimized_path=written.optimized_path,
        precision=precision,
        opset=OPSET,
        metadata=props,
        parity=written.parity,
        size_bytes=written.size_bytes,
        seconds=time.perf_counter() - start,
        int8=written.int8,
    )


def _metadata(model: Any, info: Any, precision: str) -> dict[str, str]:
    cfg = model.cfg
    shape = info.dataset.get("image_shape")
    if shape is not None and list(shape) != list(cfg.image_shape):
        raise VaegenError(
            f"config.json disagrees with itself: dataset image_shape {shape}, "
            f"model image_shape {list(cfg.image_shape)}"
        )
    return build_metadata(
        cfg,
        info.class_names,
        source_sha256=_verified_source_sha(info.model_dir),
        vaegen_version=__version__,
        precision=precision,
        dataset=str(info.dataset.get("name", "")),
    )


@dataclass(frozen=True)
class _Written:
    optimized_path: Path | None
    parity: tuple[ParityReport, ...]
    size_bytes: int
    int8: Int8Result | None = None


def _write_verified(
    proto: Any,
    model: Any,
    out_path: Path,
    precision: str,
    optimize: bool,
    int8_step: Callable[[Path], Int8Result] | None = None,
) -> _Written:
    """Save, check and only then rename the graph (and its optimized copy)."""
    onnx = require("onnx")
    tolerance = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
    reports: list[ParityReport] = []
    opt_final: Path | None = None
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
        _publish_mode(tmp)
        reports.append(_verify(tmp, model, precision, tolerance))
        # int8 first: its quality check is the step most likely to fail.
        int8_result = int8_step(tmp) if int8_step is not None else None
        if optimize:
            opt_final = optimized_path_for(out_path)
            with atomic_path(opt_final) as opt_tmp:
                save_optimized(tmp, opt_tmp)
                _publish_mode(opt_tmp)
                if read_metadata(opt_tmp) != read_metadata(tmp):
                    raise InternalFailure("onnxruntime dropped the metadata of the optimized file")
                reports.append(_verify(opt_tmp, model, f"{precision}-opt", tolerance))
        size = tmp.stat().st_size
    return _Written(opt_final, tuple(reports), size, int8_result)
