"""The sampler: one onnxruntime session per actor, turning shard plans into shard files.

`ShardGenerator` is the callable class each Ray actor of the pool runs. It builds its session
once, in `__init__`; each call receives one shard plan, decodes it in --batch-size chunks, writes
the shard file itself and returns only a small record (images never travel through Ray).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from vaegen.dataset_format import JUDGE_CONFIDENCE
from vaegen.errors import VaegenError
from workers.judge import JudgeScorer
from workers.judge_filter import DEFAULT_MIN_ACCEPTANCE, FilterRule, filter_shard
from workers.manifest import ShardRecord
from workers.spec import ShardPlan, shard_inputs
from workers.writers import write_shard

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ACTOR_REFUSED = "vaegen-actor-refused"  # a marker the driver turns into exit 2 and one line


class ActorRefused(VaegenError):
    """An actor cannot start on its node because of how the job was asked for (exit 2).

    Raised in `__init__`, it reaches the driver only as the text of Ray's actor-death error,
    hence the marker there (workers.pool.user_error finds it).
    """

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{ACTOR_REFUSED}: {option}: {reason}")


class ProviderUnavailable(ActorRefused):
    """The CUDA provider was asked for but cannot run here; never fall back to CPU silently."""

    def __init__(self, reason: str) -> None:
        super().__init__("--gpus-per-worker", reason)


@dataclass(frozen=True)
class SamplerConfig:
    """What every actor needs, beyond the model bytes (plain values: it crosses processes)."""

    out_dir: str
    fmt: str
    encoding: str
    batch_size: int
    latent_dim: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    conditional: bool
    gpu: bool = False
    threads: int = 1
    io_binding: bool = False  # always on with gpu; settable on CPU so tests cover the path
    shard_gate: str = ""  # test hook: a path; an actor's later shards wait until it exists
    temperature: float = 1.0
    min_confidence: float = 0.0  # with a judge: what it must accept
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE  # with a judge: the floor that stops a job

    def filter_rule(self) -> FilterRule:
        return FilterRule(self.latent_dim, self.temperature, self.min_acceptance, self.class_names)


def make_session(model: bytes, *, gpu: bool, threads: int):  # noqa: ANN201 - ort type is lazy
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # ORT warnings go to the worker log, not the user
    if gpu:
        if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21
            # CUDA and cuDNN from the nvidia-* wheels: without this the provider finds them
            # only when torch happened to be imported first, which workers never do.
            ort.preload_dlls()
        if CUDA not in ort.get_available_providers():
            raise ProviderUnavailable(
                f"onnxruntime on {socket.gethostname()} has no {CUDA} "
                f"(providers: {ort.get_available_providers()}); install onnxruntime-gpu"
            )
        providers = [(CUDA, {"device_id": 0}), CPU]
    else:
        providers = [CPU]
    session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    # ORT quietly drops a provider that fails to load (no driver, no libcudnn): check it took.
    if gpu and session.get_providers()[0] != CUDA:
        raise ProviderUnavailable(
            f"{CUDA} could not start on {socket.gethostname()} "
            f"(session providers: {session.get_providers()}); check the CUDA/cuDNN install"
        )
    return session


class Decoder:
    """Runs the decoder over (z, y) in batches into one preallocated uint8 array."""

    def __init__(self, model: bytes, cfg: SamplerConfig) -> None:
        self.cfg = cfg
        self.session = make_session(model, gpu=cfg.gpu, threads=cfg.threads)
        self.provider = self.session.get_providers()[0]
        self.io_binding = cfg.gpu or cfg.io_binding
        self._images = np.empty((0, *cfg.image_shape), dtype=np.uint8)

    def decode(self, z: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, list[float]]:
        """Images for (z, y), in a buffer this decoder reuses: use them before the next call."""
        n = len(z)
        if len(self._images) < n:
            # One buffer per actor, not one per shard: fresh pages cost a page fault each.
            self._images = np.empty((n, *self.cfg.image_shape), dtype=np.uint8)
        out = self._images[:n]
        seconds = []
        for start in range(0, n, self.cfg.batch_size):
            stop = min(start + self.cfg.batch_size, n)
            t0 = time.perf_counter()
            zb = z[start:stop]
            yb = None if y is None else y[start:stop]
            if self.io_binding:
                out[start:stop] = self._run_bound(zb, yb)
            else:
                feeds = {"z": zb} if yb is None else {"z": zb, "y": yb}
                out[start:stop] = self.session.run(["image"], feeds)[0]
            seconds.append(time.perf_counter() - t0)
        return out, seconds

    def _run_bound(self, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        # Inputs are copied to the device once; only `image` (uint8, 1/4 the size of `mean`)
        # comes back; `mean` is never bound, so it never leaves the device.
        binding = self.session.io_binding()
        binding.bind_cpu_input("z", np.ascontiguousarray(z))
        if y is not None:
            binding.bind_cpu_input("y", np.ascontiguousarray(y))
        binding.bind_output("image", "cuda" if self.cfg.gpu else "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def generate_shard(
    decoder: Decoder, plan: ShardPlan, node: dict, judge: JudgeScorer | None = None
) -> ShardRecord:
    """Make, write and describe one shard. Idempotent: a retry writes the same bytes."""
    cfg = decoder.cfg
    t0 = time.perf_counter()
    confidence, judged = None, None
    if judge is None:
        ids, labels, z = shard_inputs(plan, cfg.latent_dim, cfg.temperature)
        images, batch_seconds = decoder.decode(z, labels if cfg.conditional else None)
    else:
        shard = filter_shard(plan, decoder.decode, judge, cfg.filter_rule())
        ids, labels, images, batch_seconds = shard.ids, shard.labels, shard.images, shard.seconds
        confidence, judged = shard.confidence, shard.summary()
        if cfg.fmt == "imagefolder":  # its files hold no per-row field; labels.csv will
            judged["confidence"] = [float(np.format_float_positional(c)) for c in confidence]
    written = write_shard(
        cfg.out_dir,
        fmt=cfg.fmt,
        encoding=cfg.encoding,
        index=plan.index,
        ids=ids,
        labels=labels,
        images=images,
        class_names=cfg.class_names,
        extra=None if confidence is None else {JUDGE_CONFIDENCE: confidence},
    )
    return ShardRecord(
        index=plan.index,
        file=written.file,
        rows=plan.rows,
        first_id=plan.first_id,
        sha256=written.sha256,
        bytes=written.bytes,
        seed=plan.seed,
        class_counts={str(label): count for label, count in plan.class_counts},
        provider=decoder.provider,
        node=node,
        pid=os.getpid(),
        seconds=round(time.perf_counter() - t0, 6),
        batch_seconds=tuple(round(s, 6) for s in batch_seconds),
        judge=judged,
    )


def _node() -> dict[str, str]:
    node = {"hostname": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            node["node_id"] = ray.get_runtime_context().get_node_id()
            node["ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - provenance only; never fail a shard over it
        pass
    return node


class ShardGenerator:
    """The actor's callable class: one session per actor; each call makes one shard."""

    def __init__(self, model, cfg: SamplerConfig, judge=None) -> None:  # noqa: ANN001 - bytes or ObjectRef
        model, judge = _fetch(model), _fetch(judge)
        if not os.path.isdir(cfg.out_dir):
            raise ActorRefused(
                "--out",
                f"{cfg.out_dir} is not visible on {socket.gethostname()}; actors write shards "
                "there directly, so it must be on a filesystem every node shares",
            )
        self.decoder = Decoder(bytes(model), cfg)
        self.judge = None
        if judge is not None:  # after the decoder, whose session loads CUDA for both
            providers = (CUDA, CPU) if cfg.gpu else (CPU,)
            self.judge = JudgeScorer(
                bytes(judge), cfg.min_confidence, providers=providers, threads=cfg.threads
            )
        self.node = _node()  # an actor never moves: look its node up once
        self.calls = 0

    def __call__(self, plan: ShardPlan) -> ShardRecord:
        """One shard plan -> that shard's record, its file written."""
        self.calls += 1
        if self.calls > 1 and self.decoder.cfg.shard_gate:
            # Tests hold a job at a known point (every live actor has made exactly one shard)
            # while they kill something, instead of racing it with sleeps.
            while not os.path.exists(self.decoder.cfg.shard_gate):
                time.sleep(0.05)
        return generate_shard(self.decoder, plan, self.node, self.judge)


def _fetch(data):  # noqa: ANN001, ANN202 - bytes, an ObjectRef of bytes, or None
    if data is None or isinstance(data, bytes | bytearray):
        return data
    import ray

    return ray.get(data)
