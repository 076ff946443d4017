"""Where eval runs: the GPU when there is one, unless the caller says otherwise."""

from __future__ import annotations

import torch

from vaegen.errors import VaegenError


def resolve_device(name: str | None = None) -> torch.device:
    """`None`/"auto" -> cuda if available else cpu; "cpu"/"cuda[:i]" as given (cuda checked)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaegenError(f"--device must be auto, cpu or cuda[:N]; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VaegenError("--device cuda was asked for, but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise VaegenError(f"--device must be auto, cpu or cuda[:N]; got {name!r}")
    return device


def default_max_decodes(device: torch.device) -> int:
    """Decoder calls per IWAE chunk: big on a GPU, cache-sized on a CPU."""
    return 65536 if device.type == "cuda" else 4096
