"""Pool sizing and placement: how many actors, how many threads and what each reserves."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from vaegen.errors import VaegenError
from workers.decoder_meta import DecoderInfo
from workers.options import GenerateOptions
from workers.sampler import CPU, CUDA

MAX_CPU_ACTORS = 16  # past this, bigger machines get more ORT threads per actor instead
# Operators of int8 decoders that onnxruntime's CUDA provider has no kernel for
# (onnxruntime docs/OperatorKernels.md): DynamicQuantizeLinear and ConvInteger are not
# registered, and its MatMulInteger takes int8 x int8 only, while dynamic quantization feeds it
# uint8 activations. ORT would run them on the CPU, with device copies around each one.
CUDA_MISSING_OPS = ("ConvInteger", "DynamicQuantizeLinear", "MatMulInteger")


@dataclass(frozen=True)
class ActorLayout:
    workers: int
    threads: int  # onnxruntime intra-op threads per actor
    num_cpus: float  # Ray CPU reservation per actor (fractional: leave CPU for other Ray work)
    num_gpus: float
    provider: str

    def need(self) -> str:
        """What one actor asks Ray for, in words."""
        return f"{self.num_cpus:g} CPU" + (f" + {self.num_gpus:g} GPU" if self.num_gpus else "")


def _floor3(x: float) -> float:
    return math.floor(x * 1000) / 1000  # round down: the pool must fit what it was sized to


def plan_layout(
    workers: int | None,
    gpus_per_worker: float,
    cpus: float,
    gpus: float,
    node_cpus: float | None = None,
) -> ActorLayout:
    """Size the actor pool to the cluster's resources, or raise VaegenError if it cannot run.

    `workers` and `gpus_per_worker` are checked options (GenerateOptions). `cpus` and `gpus`
    are the cluster's totals; `node_cpus`, the most CPUs of any one node, caps what one actor
    reserves (an actor needing more than any node has is never placed).
    """
    cpus = max(cpus, 1.0)
    if gpus_per_worker > 0:
        return _gpu_layout(workers, gpus_per_worker, cpus, gpus)
    if workers is None:
        threads = max(1, math.ceil(cpus / MAX_CPU_ACTORS))
        count = max(1, int(cpus // threads))
    else:
        count = workers
        threads = max(1, int(cpus // count))
    # A pool that reserves every CPU starves any other Ray task (an eval job sharing the
    # cluster), which then hangs silently: reserve at most cpus - 1 (or half of one CPU on a
    # 1-CPU node). Threads still use every core.
    spare = cpus - 1 if cpus > 1 else 0.5
    num_cpus = max(0.05, min(float(threads), spare / count))
    if node_cpus:
        threads = max(1, min(threads, int(node_cpus)))
        num_cpus = min(num_cpus, node_cpus)
    return ActorLayout(count, threads, _floor3(num_cpus), 0.0, CPU)


def _gpu_layout(
    workers: int | None, gpus_per_worker: float, cpus: float, gpus: float
) -> ActorLayout:
    if gpus < gpus_per_worker:
        raise VaegenError(
            f"--gpus-per-worker {gpus_per_worker:g} needs a GPU, but the Ray cluster has "
            f"{gpus:g}; run on a GPU node or drop --gpus-per-worker"
        )
    count = workers or max(1, int(gpus // gpus_per_worker))
    if count * gpus_per_worker > gpus + 1e-9:
        raise VaegenError(
            f"{count} workers x {gpus_per_worker:g} GPUs need {count * gpus_per_worker:g} "
            f"GPUs; the Ray cluster has {gpus:g}"
        )
    # A GPU actor needs little CPU; still leave one CPU free for the rest of Ray.
    num_cpus = min(1.0, max(0.1, (cpus - 1) / count)) if cpus > 1 else 0.5 / count
    return ActorLayout(count, 1, _floor3(num_cpus), gpus_per_worker, CUDA)


def check_local_provider(options: GenerateOptions) -> None:
    """A local GPU run decodes on this machine: refuse now if its onnxruntime lacks CUDA.

    On a cluster each actor checks its own node (workers.sampler.ProviderUnavailable).
    """
    if options.gpus_per_worker <= 0 or options.ray_address or os.environ.get("RAY_ADDRESS"):
        return
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        raise VaegenError(
            f"--gpus-per-worker needs onnxruntime's {CUDA}, which this onnxruntime lacks "
            f"({ort.get_available_providers()}); install onnxruntime-gpu"
        )


def check_gpu_decoder(decoder: DecoderInfo, options: GenerateOptions) -> None:
    """GPU actors run only decoders whose every operator has a CUDA kernel: refuse the rest
    before any actor starts, rather than decode on the CPU behind the user's back."""
    missing = [op for op in decoder.op_types if op in CUDA_MISSING_OPS]
    if options.gpus_per_worker <= 0 or not missing:
        return
    raise VaegenError(
        f"--gpus-per-worker: {Path(decoder.path).name} ({decoder.precision}) uses "
        f"{', '.join(missing)}, which onnxruntime's {CUDA} has no kernel for (int8 runs on "
        "CPU actors); drop --gpus-per-worker, or give GPU actors the fp32 decoder.onnx"
    )


def cluster_layout(options: GenerateOptions) -> ActorLayout:
    """The pool for the Ray cluster this process is connected to."""
    import ray

    resources = ray.cluster_resources()
    node_cpus = max(
        (n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=None
    )
    return plan_layout(
        options.workers,
        options.gpus_per_worker,
        resources.get("CPU", 1.0),
        resources.get("GPU", 0.0),
        node_cpus=node_cpus,
    )
