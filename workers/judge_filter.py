"""Judge-filtered shards: exact class counts, each row a sample the judge accepts for its label.

A shard keeps its labels exactly where the plan puts them (so ids, labels, imagefolder paths and
labels.csv stay functions of the plan); only a rejected row's latent is replaced. Round 0 decodes
the shard's usual latents; each later round draws, from the same shard stream, candidates for
the rows still open, class by class (classes ascending), as many per class as the shard's own
acceptance so far says it needs (at most a round cap, a function of the shard alone). The first
accepted candidates of a class fill its open rows in row order. Everything is a function of the
plan and the judge's outputs, so the bytes do not depend on --workers, --batch-size or resume.

The floor: a class still open whose acceptance (accepted / drawn, in this shard) is under
--min-acceptance once it has had enough draws (FLOOR_EVIDENCE accepted samples' worth at the
floor rate) stops the job (VaegenError, exit 2). This bounds the work: a class still open after
that many draws has accepted at least the floor rate, so its draws never exceed need / floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vaegen.errors import VaegenError
from workers.judge import JudgeScorer
from workers.spec import ShardPlan, draw_latents, shard_inputs, shard_stream

Decode = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, list[float]]]

MIN_ROUND = 1024  # candidates a round may draw, at least (a shard's rows, if more)
FLOOR_EVIDENCE = 10  # judge a class against the floor after 10 / floor draws
DEFAULT_MIN_ACCEPTANCE = 0.01


@dataclass(frozen=True)
class FilterRule:
    """How a shard is drawn and filtered (plain values: it crosses to the actors)."""

    latent_dim: int
    temperature: float = 1.0
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE
    class_names: tuple[str, ...] = ()

    def enough_draws(self) -> int:
        return math.ceil(FLOOR_EVIDENCE / self.min_acceptance)


@dataclass(eq=False)
class FilteredShard:
    """A shard's rows once every one passed the judge, and what it took."""

    ids: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # uint8 [rows, C, H, W]
    confidence: np.ndarray  # float32 [rows]: the judge's probability of each row's label
    classes: np.ndarray  # the shard's labels, ascending
    drawn: np.ndarray  # samples decoded and judged, per class
    accepted: np.ndarray  # ... of which the judge accepted (>= the rows kept)
    filled: np.ndarray  # bool [rows]: the row holds an accepted sample
    seconds: list[float]  # per decoder call

    def summary(self) -> dict:
        """The manifest's per-shard "judge" entry: drawn, accepted and the rate, per label."""
        keys = [str(int(c)) for c in self.classes]
        return {
            "drawn": dict(zip(keys, self.drawn.tolist(), strict=True)),
            "accepted": dict(zip(keys, self.accepted.tolist(), strict=True)),
            "acceptance_rate": dict(zip(keys, rates(self.accepted, self.drawn), strict=True)),
        }


def rates(accepted: Sequence[int] | np.ndarray, drawn: Sequence[int] | np.ndarray) -> list[float]:
    """accepted / drawn per class, rounded for the manifest (0 where nothing was drawn)."""
    return [round(a / d, 6) if d else 0.0 for a, d in zip(accepted, drawn, strict=True)]


def filter_shard(
    plan: ShardPlan, decode: Decode, scorer: JudgeScorer, rule: FilterRule
) -> FilteredShard:
    """Make one shard of judge-accepted rows (module docstring), or raise VaegenError."""
    rng = shard_stream(plan)
    ids, labels, z = shard_inputs(plan, rule.latent_dim, rule.temperature, rng=rng)
    classes = np.array([label for label, _ in plan.class_counts], dtype=np.int64)
    images, seconds = decode(z, labels)
    images = images.copy()  # the decoder reuses its buffer on the next call
    passed, confidence = scorer.score(images, labels)
    per_class = np.searchsorted(classes, labels)
    shard = FilteredShard(
        ids=ids,
        labels=labels,
        drawn=np.bincount(per_class, minlength=len(classes)),
        accepted=np.bincount(per_class[passed], minlength=len(classes)),
        images=images,
        confidence=confidence,
        classes=classes,
        filled=passed,
        seconds=list(seconds),
    )
    _check_floor(shard, plan, rule)
    while not shard.filled.all():
        _fill_round(shard, rng, decode, scorer, rule, cap=max(plan.rows, MIN_ROUND))
        _check_floor(shard, plan, rule)
    return shard


def candidates_per_class(
    need: np.ndarray, drawn: np.ndarray, accepted: np.ndarray, cap: int
) -> np.ndarray:
    """Candidates to draw per class this round: need / (the shard's acceptance so far).

    A class with none accepted yet is taken to accept one of its draws so far, so its rounds
    grow geometrically until the floor can judge it. At most `cap` in all (scaled down).
    """
    rate = np.maximum(accepted, 1) / np.maximum(drawn, 1)
    want = np.where(need > 0, np.ceil(need / rate), 0).astype(np.int64)
    total = int(want.sum())
    if total > cap:
        want = np.where(need > 0, np.maximum(1, want * cap // total), 0)
    return want


def _fill_round(
    shard: FilteredShard,
    rng: np.random.Generator,
    decode: Decode,
    scorer: JudgeScorer,
    rule: FilterRule,
    cap: int,
) -> None:
    open_rows = np.flatnonzero(~shard.filled)
    open_class = np.searchsorted(shard.classes, shard.labels[open_rows])
    need = np.bincount(open_class, minlength=len(shard.classes))
    count = candidates_per_class(need, shard.drawn, shard.accepted, cap)
    cand_labels = np.repeat(shard.classes, count)
    z = draw_latents(rng, len(cand_labels), rule.latent_dim, rule.temperature)
    images, seconds = decode(z, cand_labels)
    passed, confidence = scorer.score(images, cand_labels)
    shard.seconds += seconds
    starts = np.concatenate([[0], np.cumsum(count)])
    for i in np.flatnonzero(need):
        block = slice(starts[i], starts[i + 1])
        got = starts[i] + np.flatnonzero(passed[block])
        shard.drawn[i] += count[i]
        shard.accepted[i] += len(got)
        rows = open_rows[open_class == i][: len(got)]
        got = got[: len(rows)]
        shard.images[rows] = images[got]
        shard.confidence[rows] = confidence[got]
        shard.filled[rows] = True


def _check_floor(shard: FilteredShard, plan: ShardPlan, rule: FilterRule) -> None:
    open_class = np.searchsorted(shard.classes, shard.labels[~shard.filled])
    for i in np.unique(open_class):
        drawn, accepted = int(shard.drawn[i]), int(shard.accepted[i])
        if drawn >= rule.enough_draws() and accepted < rule.min_acceptance * drawn:
            label = int(shard.classes[i])
            name = rule.class_names[label] if label < len(rule.class_names) else str(label)
            raise VaegenError(
                f"--judge accepts {accepted / drawn:.2%} of class {label} ({name!r}) "
                f"({accepted} of {drawn} drawn for shard {plan.index}), under "
                f"--min-acceptance {rule.min_acceptance:g}; lower --min-confidence, or use a "
                "better model"
            )
