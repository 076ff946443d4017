"""The job spec, class-count parsing, shard planning and each shard's random stream.

Determinism: everything a shard holds is a function of (spec, shard index) alone.

- The planner splits the global class counts over the shards with a chain of multivariate
  hypergeometric draws from one stream, SeedSequence(seed, spawn_key=(0,)). That is the same as
  laying the N labels out and shuffling them globally, but it needs O(shards * classes) memory.
- Shard k's stream is Generator(Philox(shard_seed)), where shard_seed is the first 64 bits of
  SeedSequence(seed, spawn_key=(1, k)). It first shuffles the shard's labels, then draws its
  latents z ~ N(0, T^2 I) (T = --temperature) in one call, so neither depends on --batch-size
  or --workers. With --judge, the same stream goes on to draw the replacements of rejected
  samples (workers.judge_filter).
- Shard k holds ids [k*S, min((k+1)*S, N)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vaegen.dataset_format import ENCODINGS, FORMATS, UNLABELED, balanced_counts
from vaegen.errors import VaegenError
from workers.decoder_meta import DecoderInfo, read_decoder
from workers.judge import DEFAULT_MIN_CONFIDENCE, JudgeInfo, read_judge

DEFAULT_SHARD_SIZE = 16384  # ~0.3 s of CPU decoding: enough shards to balance, small actors
# Rows per decoder call. On a CPU, one onnxruntime thread runs the MLP decoder 7% faster in
# calls of 1024 than of 4096 (its activations stay in L2); a GPU wants big calls to amortize
# launches and copies. The batch size never changes the bytes written.
DEFAULT_BATCH_SIZE = 1024
GPU_BATCH_SIZE = 8192
MAX_SHARDS = 200_000  # the manifest lists every shard; past this, ask for bigger shards
# Spec fields added after manifest_version 1, with what a manifest without them means. They are
# written only when they differ: an unfiltered T=1 spec keeps its manifest bytes, and a
# dataset written before them still resumes.
SPEC_DEFAULTS: dict[str, object] = {"temperature": 1.0, "judge_sha256": None,
                                    "min_confidence": None}  # fmt: skip


@dataclass(frozen=True)
class JobSpec:
    """Everything that decides the dataset's bytes (on one execution provider)."""

    decoder: DecoderInfo
    num_samples: int
    class_counts: tuple[tuple[int, int], ...]  # (label, count), label ascending, count > 0
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    format: str = "parquet"
    encoding: str = "raw"
    temperature: float = 1.0  # z ~ N(0, T^2 I)
    judge: JudgeInfo | None = None  # keep only samples it judges to be their label
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  # ... with at least this probability

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def to_json(self) -> dict:
        """The manifest's "spec" block; resume compares it field by field."""
        return {
            "model_sha256": self.decoder.sha256,
            "num_samples": self.num_samples,
            "class_counts": {str(label): count for label, count in self.class_counts},
            "seed": self.seed,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "format": self.format,
            "encoding": self.encoding,
            **{k: v for k, v in self._sampling().items() if v != SPEC_DEFAULTS[k]},
        }

    def _sampling(self) -> dict[str, object]:
        judged = self.judge is not None
        return {
            "temperature": self.temperature,
            "judge_sha256": self.judge.sha256 if judged else None,
            "min_confidence": self.min_confidence if judged else None,
        }


@dataclass(frozen=True)
class ShardPlan:
    index: int
    first_id: int
    rows: int
    seed: int  # numpy.random.Generator(numpy.random.Philox(seed)) is this shard's stream
    class_counts: tuple[tuple[int, int], ...] = field(default=())  # (label, count), count > 0


def _resolve_class(key: str, info: DecoderInfo) -> int:
    """An integer is a class index; anything else is a class name."""
    key = key.strip()
    try:
        label = int(key)
    except ValueError:
        if key in info.class_names:
            return info.class_names.index(key)
        raise VaegenError(
            f"unknown class {key!r}; the model's classes are {list(info.class_names)}"
        ) from None
    if not 0 <= label < info.num_classes:
        raise VaegenError(f"unknown class {label}; class indices are 0..{info.num_classes - 1}")
    return label


def parse_class_counts(text: str, info: DecoderInfo) -> dict[int, int]:
    """'0=100,3=50' or 'cat=10,dog=5' -> {label: count}."""
    counts: dict[int, int] = {}
    for item in (part for part in text.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        if not sep:
            raise VaegenError(f"--class-counts item {item.strip()!r} is not CLASS=COUNT")
        label = _resolve_class(key, info)
        try:
            count = int(value)
        except ValueError:
            raise VaegenError(
                f"--class-counts: count {value.strip()!r} is not an integer"
            ) from None
        if count < 0:
            raise VaegenError(f"--class-counts: count for class {key.strip()!r} is negative")
        if label in counts:
            raise VaegenError(f"--class-counts names class {key.strip()!r} twice")
        counts[label] = count
    if not counts:
        raise VaegenError("--class-counts is empty")
    return counts


def parse_classes(text: str, info: DecoderInfo) -> list[int]:
    labels = [_resolve_class(part, info) for part in text.split(",") if part.strip()]
    if not labels:
        raise VaegenError("--classes is empty")
    if len(set(labels)) != len(labels):
        raise VaegenError("--classes names a class twice")
    return sorted(labels)


def default_batch_size(gpus_per_worker: float) -> int:
    """--batch-size when none is given: 1024 on CPU actors, 8192 on GPU actors."""
    return GPU_BATCH_SIZE if gpus_per_worker > 0 else DEFAULT_BATCH_SIZE


def build_spec(
    model: str,
    num_samples: int,
    *,
    class_counts: str | None = None,
    classes: str | None = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    format: str = "parquet",  # noqa: A002 - the CLI option's name
    encoding: str | None = None,
    decoder: DecoderInfo | None = None,
    temperature: float = 1.0,
    judge: str | None = None,
    min_confidence: float | None = None,
) -> JobSpec:
    """Validate every option against the model, or raise VaegenError; writes nothing."""
    _check_sizes(num_samples, seed, shard_size, batch_size)
    encoding = _check_format(format, encoding)
    if class_counts is not None and classes is not None:
        raise VaegenError("give --class-counts or --classes, not both")
    if not (math.isfinite(temperature) and temperature > 0):
        raise VaegenError(f"--temperature must be > 0, got {temperature:g}")
    if min_confidence is not None and judge is None:
        raise VaegenError("--min-confidence needs --judge JUDGE/judge.onnx")
    info = decoder or read_decoder(model)
    if encoding == "png" and info.image_shape[0] not in (1, 3, 4):
        raise VaegenError(f"PNG needs 1, 3 or 4 channels; the model makes {info.image_shape}")
    counts = _label_counts(info, num_samples, class_counts, classes)
    if min_confidence is None:
        min_confidence = DEFAULT_MIN_CONFIDENCE
    return JobSpec(
        decoder=info,
        num_samples=num_samples,
        class_counts=tuple(sorted((k, v) for k, v in counts.items() if v > 0)),
        seed=seed,
        shard_size=shard_size,
        batch_size=batch_size,
        format=format,
        encoding=encoding,
        temperature=float(temperature),
        judge=None if judge is None else read_judge(judge, info, min_confidence),
        min_confidence=float(min_confidence),
    )


def _check_sizes(num_samples: int, seed: int, shard_size: int, batch_size: int) -> None:
    for option, value in (("--num-samples", num_samples), ("--shard-size", shard_size),
                          ("--batch-size", batch_size)):  # fmt: skip
        if value < 1:
            raise VaegenError(f"{option} must be >= 1, got {value}")
    if seed < 0:
        raise VaegenError(f"--seed must be >= 0, got {seed}")
    if math.ceil(num_samples / shard_size) > MAX_SHARDS:
        raise VaegenError(
            f"{num_samples} samples in shards of {shard_size} make more than {MAX_SHARDS} "
            "shards; raise --shard-size"
        )


def _check_format(fmt: str, encoding: str | None) -> str:
    """The encoding to use (the format's default if none is given), or VaegenError."""
    if fmt not in FORMATS:
        raise VaegenError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    encoding = encoding or FORMATS[fmt].default_encoding
    if encoding not in ENCODINGS:
        raise VaegenError(f"--encoding must be {' or '.join(ENCODINGS)}, got {encoding!r}")
    if encoding not in FORMATS[fmt].encodings:
        raise VaegenError(FORMATS[fmt].other_encoding)
    return encoding


def _label_counts(
    info: DecoderInfo, num_samples: int, class_counts: str | None, classes: str | None
) -> dict[int, int]:
    if not info.conditional:
        if class_counts is not None or classes is not None:
            raise VaegenError(
                "the model is an unconditional VAE (num_classes 0): "
                "--class-counts and --classes do not apply"
            )
        return {UNLABELED: num_samples}
    if class_counts is not None:
        counts = parse_class_counts(class_counts, info)
        total = sum(counts.values())
        if total != num_samples:
            raise VaegenError(f"--class-counts sum to {total}, but --num-samples is {num_samples}")
        return counts
    if classes is not None:
        return balanced_counts(num_samples, parse_classes(classes, info))
    return balanced_counts(num_samples, list(range(info.num_classes)))


def _shard_seed(seed: int, index: int) -> int:
    state = np.random.SeedSequence(seed, spawn_key=(1, index)).generate_state(1, np.uint64)
    return int(state[0])


def plan_shards(spec: JobSpec) -> list[ShardPlan]:
    """Split the job into shards with exact global class counts (see the module docstring)."""
    labels = np.array([label for label, _ in spec.class_counts], dtype=np.int64)
    remaining = np.array([count for _, count in spec.class_counts], dtype=np.int64)
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence(spec.seed, spawn_key=(0,))))
    plans = []
    for index in range(spec.num_shards):
        first = index * spec.shard_size
        rows = min(spec.shard_size, spec.num_samples - first)
        if rows == int(remaining.sum()):
            drawn = remaining.copy()
        else:
            drawn = rng.multivariate_hypergeometric(remaining, rows)
        remaining -= drawn
        plans.append(
            ShardPlan(
                index=index,
                first_id=first,
                rows=rows,
                seed=_shard_seed(spec.seed, index),
                class_counts=tuple(
                    (int(label), int(n)) for label, n in zip(labels, drawn, strict=True) if n > 0
                ),
            )
        )
    if remaining.any():  # the draws above always exhaust the pool; this guards a refactor
        raise RuntimeError("shard plan does not use every label")
    return plans


def shard_labels(plan: ShardPlan, rng: np.random.Generator) -> np.ndarray:
    """The shard's labels in row order: its counts laid out, then shuffled by its stream."""
    labels = np.repeat(
        np.array([label for label, _ in plan.class_counts], dtype=np.int64),
        [count for _, count in plan.class_counts],
    )
    rng.shuffle(labels)
    return labels


def shard_stream(plan: ShardPlan) -> np.random.Generator:
    """The shard's own random stream (module docstring); every draw for the shard comes from it."""
    return np.random.Generator(np.random.Philox(plan.seed))


def draw_latents(
    rng: np.random.Generator, rows: int, latent_dim: int, temperature: float = 1.0
) -> np.ndarray:
    """z ~ N(0, T^2 I), float32 [rows, latent_dim]."""
    z = rng.standard_normal((rows, latent_dim), dtype=np.float32)
    if temperature != 1.0:  # T = 1 leaves the draws untouched, as before --temperature existed
        z *= np.float32(temperature)
    return z


def shard_inputs(
    plan: ShardPlan,
    latent_dim: int,
    temperature: float = 1.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, z) for one shard, a pure function of the plan.

    `rng` is shard_stream(plan), fresh, when the caller goes on drawing from it afterwards.
    """
    rng = shard_stream(plan) if rng is None else rng
    labels = shard_labels(plan, rng)
    z = draw_latents(rng, plan.rows, latent_dim, temperature)
    ids = np.arange(plan.first_id, plan.first_id + plan.rows, dtype=np.int64)
    return ids, labels, z


def shard_label_sequence(plan: ShardPlan) -> np.ndarray:
    """Just the labels (no latents): enough to list imagefolder files or write labels.csv.

    The judge filter never moves a label: it replaces a rejected row's latent, not its label.
    """
    return shard_labels(plan, shard_stream(plan))
