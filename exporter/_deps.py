"""Lazy imports of the heavy ONNX stack, with an install hint when a package is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from vaegen.errors import MissingDependency

_HINTS = {
    "onnx": "pip install 'onnx>=1.16'",
    "onnxscript": "pip install 'onnxscript>=0.2'",
    "onnxruntime": "pip install onnxruntime-gpu (or onnxruntime on a CPU-only machine)",
}


def require(name: str) -> ModuleType:
    """Import `name` (onnx, onnxscript or onnxruntime) or raise MissingDependency with a hint."""
    try:
        return importlib.import_module(name)
    except ImportError:
        hint = _HINTS.get(name, f"pip install {name}")
        raise MissingDependency(f"vaegen export needs the {name} package: {hint}") from None
