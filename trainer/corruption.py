"""Input corruption for denoising: the encoder sees a corrupted image, the likelihood the clean one.

`mask:P` zeroes each pixel (all its channels) with probability P; `gaussian:S` adds N(0, S^2)
noise to each value and clips to [0, 1]. The spec string is what `--corrupt` takes and what
`config.json` stores. Parsing imports no torch, so reading a config stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaegen.errors import VaegenError

if TYPE_CHECKING:
    import torch

KINDS = ("mask", "gaussian")
_USAGE = "--corrupt takes mask:P (0 <= P < 1) or gaussian:S (S > 0)"


@dataclass(frozen=True)
class Corruption:
    kind: str  # "mask" or "gaussian"
    amount: float  # P for mask, S for gaussian

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise VaegenError(f"{_USAGE}; unknown kind {self.kind!r}")
        if not math.isfinite(self.amount):
            raise VaegenError(f"{_USAGE}; got {self.amount}")
        if self.kind == "mask" and not 0 <= self.amount < 1:
            raise VaegenError(f"{_USAGE}; mask probability {self.amount} is outside [0, 1)")
        if self.kind == "gaussian" and not self.amount > 0:
            raise VaegenError(f"{_USAGE}; gaussian std {self.amount} is not > 0")

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.amount:g}"

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A corrupted copy of `x` [B, C, H, W] in [0, 1]; `x` itself is left as it is."""
        import torch

        if self.kind == "mask":
            keep = torch.rand(
                (x.shape[0], 1, *x.shape[2:]), generator=generator, device=x.device
            ).ge_(self.amount)
            return x * keep.to(x.dtype)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.amount * noise).clamp_(0.0, 1.0)


def parse_corruption(spec: str | None) -> Corruption | None:
    """'mask:0.5' -> Corruption('mask', 0.5); None or '' -> None (no corruption)."""
    if spec is None or not spec.strip():
        return None
    kind, sep, value = spec.strip().partition(":")
    if not sep:
        raise VaegenError(f"{_USAGE}; got {spec!r}")
    try:
        amount = float(value)
    except ValueError:
        raise VaegenError(f"{_USAGE}; {value!r} in {spec!r} is not a number") from None
    return Corruption(kind.strip().lower(), amount)
