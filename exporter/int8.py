"""`vaegen export --int8`: decoder.int8.onnx beside a verified fp32 decoder, judged for quality.

The int8 file is quantized from the fp32 file (exporter.quantize), passes the same graph checks,
and must score like it (exporter.int8_check). It is written under a temporary name and renamed
only when the check passes; a failure raises InternalFailure and, since export_decoder calls
this while the fp32 file is still temporary too, leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.int8_check import QualityCheck, QualityReport, check_quality
from exporter.int8_judge import judge_for_run
from exporter.quantize import DEFAULT_SCHEME, QuantScheme, int8_path_for, save_int8
from vaegen.atomic import atomic_path
from vaegen.errors import InternalFailure, VaegenError


@dataclass(frozen=True)
class Int8Options:
    scheme: QuantScheme = DEFAULT_SCHEME
    check: QualityCheck = field(default_factory=QualityCheck)
    judge: str | None = None  # a JUDGE folder from `vaegen judge`; None: eval's cached judge


@dataclass(frozen=True)
class Int8Result:
    path: Path
    metadata: dict[str, str]
    quality: QualityReport

    def describe(self) -> str:
        return f"int8 copy ({self.metadata['quantization']}) {self.path}\n{self.quality.summary()}"


def int8_options(
    int8: bool,
    judge: str | os.PathLike[str] | None,
    max_fidelity_drop: float,
    max_fid_ratio: float,
    num_samples: int,
) -> Int8Options | None:
    """The CLI's --int8 flags as options (None without --int8)."""
    if not int8:
        if judge is not None:
            raise VaegenError("--judge scores the int8 copy: it needs --int8")
        return None
    check = QualityCheck(max_fidelity_drop, max_fid_ratio, num_samples)
    return Int8Options(check=check, judge=None if judge is None else str(judge))


def export_int8(
    fp32_file: str | os.PathLike[str],
    out: Path,
    props: dict[str, str],
    info: Any,
    options: Int8Options,
) -> Int8Result:
    """Quantize the verified `fp32_file` to int8_path_for(out) and prove its quality.

    `props` are the fp32 file's metadata, `info` the checkpoint's ModelInfo (its dataset names
    the judge and the real test split).
    """
    judge = judge_for_run(info, options.judge)  # before quantizing: bad input fails fast
    final = int8_path_for(out)
    with atomic_path(final) as tmp:
        meta = save_int8(fp32_file, tmp, props, options.scheme)
        report = check_quality(fp32_file, tmp, props, judge, options.check)
        if not report.passed:
            raise InternalFailure(f"{report.summary()}; nothing was written")
    return Int8Result(final, meta, report)


def int8_writer(
    out: Path, props: dict[str, str], info: Any, options: Int8Options
) -> Callable[[Path], Int8Result]:
    """export_int8 for `out`, waiting for the verified (still temporary) fp32 file."""

    def write(fp32_file: Path) -> Int8Result:
        return export_int8(fp32_file, out, props, info, options)

    return write
