"""Per-epoch means summed over the Ray Train worker group: each step adds (total, count) pairs.

Every worker runs the same code path, so every worker holds the same names and `means` makes the
same all-reduce call on each of them (a mismatch would hang the group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sums(values: list[float]) -> list[float]:
    """Sum per-worker totals across the group (no-op for a single process)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


class Tally:
    """Named (total, count) sums; `means()` gives total / count per name over all workers."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    def add(self, name: str, total: float | torch.Tensor, count: float) -> None:
        pair = self._sums.setdefault(name, [0.0, 0.0])
        pair[0] += float(total)
        pair[1] += float(count)

    def add_mean(self, name: str, values: torch.Tensor) -> None:
        """Add a batch of per-item values (their sum and their number)."""
        self.add(name, values.detach().sum(), values.numel())

    def means(self, count_of: str = "elbo") -> dict[str, float]:
        """total / count per name, summed over the group; `n` is the count of `count_of`."""
        names = sorted(self._sums)
        flat = all_reduce_sums([v for name in names for v in self._sums[name]])
        totals, counts = flat[0::2], flat[1::2]
        out = {name: t / max(c, 1.0) for name, t, c in zip(names, totals, counts, strict=True)}
        out["n"] = counts[names.index(count_of)] if count_of in names else 0.0
        return out
