"""Decoder throughput: torch eager vs onnxruntime (CPU), against this CPU's measured GEMM peak.

    .venv/bin/python bench/decoder.py [--threads N] [--reps 7] [--archs mlp,conv]

Models: the default CVAE configs for MNIST-shaped images (1x28x28, latent 16, 10 classes), random
weights, exported with exporter.graph (the real decoder.onnx graph). For each decoder it prints
the FLOPs per sample (2 x multiply-adds of its Linear/Conv2d layers; bias, activations, upsample,
sigmoid and quantization are not counted), then samples/s per batch size, each as a fraction of
the peak-implied limit peak_flops / flops_per_sample.

The peak is the faster of two float32 square matmuls run here with the same thread count:
onnxruntime MatMul (MLAS, the GEMM behind ORT's Gemm nodes) and torch.mm (MKL). On a shared
machine other processes' load changes from second to second, so each repetition measures the
peak right beside the decoder (a paired probe) and the fraction is the median of the per-rep
ratios; throughputs are medians over --reps repetitions of at least --min-time seconds each.

Runtimes:
- torch: eager DecoderForExport (the same outputs as the ONNX graph) under torch.inference_mode.
- ort: InferenceSession.run, the plain call (ORT allocates and returns fresh output arrays).
- ort+iobind: the same session with outputs bound once to preallocated numpy buffers.
ORT sessions use ORT_ENABLE_ALL, intra-op threads = --threads, and no thread spinning (--spin
turns it on; spinning threads steal a shared machine's CPU from whatever runs next).

Last, onnxruntime's profiler splits the MLP's time at its best batch size by op type: the GEMMs
vs the elementwise tail (Sigmoid, Mul, Round, Clip, Cast).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.graph import DecoderForExport, export_onnx
from trainer.config import ModelConfig
from trainer.models import build_model

BATCH_SIZES = (256, 512, 1024, 2048, 4096, 8192)
IMAGE_SHAPE = (1, 28, 28)
LATENT, CLASSES = 16, 10
TAIL_OPS = ("Sigmoid", "Mul", "Round", "Clip", "Cast")
GEMM_OPS = ("Gemm", "FusedGemm", "MatMul", "Conv", "FusedConv")
RUNTIMES = ("torch", "ort", "ort+iobind")


SPIN = {"on": False}  # set from --spin in main()


def session(
    model: str | bytes, threads: int, profile_dir: str | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning workers keep a core busy after each call: on a shared machine that CPU time is
    # taken from the next measurement (and from other processes), so it is off unless --spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN["on"] else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def timed_rate(fn: Callable[[], object], items: float, min_time: float) -> float:
    """items/s of `fn`, looped for at least `min_time` seconds."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls * items / elapsed


class PeakProbe:
    """float32 n^3 matmuls in onnxruntime (MLAS) and torch (MKL); GFLOP/s of the faster one."""

    def __init__(self, threads: int, n: int = 1024) -> None:
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["A", "B"], ["C"])],
            "matmul",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])],
            [numpy_helper.from_array(b, "B")],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        self.sess = session(proto.SerializeToString(), threads)
        self.ta, self.tb = torch.from_numpy(self.a), torch.from_numpy(b)
        self.flops = 2.0 * n**3
        self.measure(0.05)  # warm-up both libraries

    def measure(self, min_time: float) -> tuple[float, float]:
        """(MLAS, MKL) GFLOP/s now."""
        mlas = timed_rate(lambda: self.sess.run(None, {"A": self.a}), self.flops, min_time)
        with torch.inference_mode():
            mkl = timed_rate(lambda: torch.mm(self.ta, self.tb), self.flops, min_time)
        return mlas / 1e9, mkl / 1e9


@dataclass(frozen=True)
class Cell:
    """One runtime at one batch size: median samples/s and median fraction of the paired limit."""

    rate: float
    fraction: float
    peak_gflops: float


def paired(
    fn: Callable[[], object], batch: int, flops: int, probe: PeakProbe, reps: int, min_time: float
) -> Cell:
    fn()  # warm-up: first-call allocations, thread pool start, weight prepacking
    rates, peaks = [], []
    for _ in range(reps):
        peaks.append(max(probe.measure(min_time / 2)))
        rates.append(timed_rate(fn, batch, min_time))
    fractions = [r * flops / (p * 1e9) for r, p in zip(rates, peaks, strict=True)]
    return Cell(statistics.median(rates), statistics.median(fractions), statistics.median(peaks))


def decoder_flops(model: torch.nn.Module) -> int:
    """2 x multiply-adds per sample of the decoder's Linear and Conv2d layers."""
    total = 0

    def hook(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Linear):
            total += 2 * module.in_features * module.out_features
        else:
            kh, kw = module.kernel_size
            total += 2 * module.in_channels // module.groups * kh * kw * output[0].numel()

    layers = (torch.nn.Linear, torch.nn.Conv2d)
    handles = [
        m.register_forward_hook(hook) for m in model.decoder.modules() if isinstance(m, layers)
    ]
    with torch.inference_mode():
        model.decode(torch.zeros(1, LATENT), torch.zeros(1, dtype=torch.int64))
    for h in handles:
        h.remove()
    return total


def inputs(batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch)
    z = rng.standard_normal((batch, LATENT), dtype=np.float32)
    return z, (np.arange(batch) % CLASSES).astype(np.int64)


def iobound_runner(sess: ort.InferenceSession, z: np.ndarray, y: np.ndarray) -> Callable[[], None]:
    """Inputs and outputs bound once to numpy buffers: no per-call allocation or copy."""
    binding = sess.io_binding()
    binding.bind_cpu_input("z", z)
    binding.bind_cpu_input("y", y)
    shape = (z.shape[0], *IMAGE_SHAPE)
    outputs = {"image": np.empty(shape, np.uint8), "mean": np.empty(shape, np.float32)}
    for name, buf in outputs.items():
        binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)

    def run() -> None:
        sess.run_with_iobinding(binding)
        _ = outputs  # the buffers must live as long as the binding

    return run


def runners(
    wrapper: DecoderForExport, sess: ort.InferenceSession, batch: int
) -> dict[str, Callable[[], object]]:
    z, y = inputs(batch)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)

    def eager() -> object:
        with torch.inference_mode():
            return wrapper(zt, yt)

    return {
        "torch": eager,
        "ort": lambda: sess.run(None, {"z": z, "y": y}),
        "ort+iobind": iobound_runner(sess, z, y),
    }


def bench_arch(
    arch: str, path: str, probe: PeakProbe, batches: list[int], args: argparse.Namespace
) -> tuple[int, Cell, int]:
    """Print one decoder's table; return its FLOPs/sample and its best ORT cell and batch."""
    cfg = ModelConfig(
        model="cvae", arch=arch, image_shape=IMAGE_SHAPE, num_classes=CLASSES, latent_dim=LATENT
    )
    model = build_model(cfg).eval()
    flops = decoder_flops(model)
    onnx.save(export_onnx(model), path)
    sess = session(path, args.threads)
    wrapper = DecoderForExport(model).eval()
    print(
        f"\n{arch} decoder (hidden {cfg.hidden_dims}, conv {cfg.conv_channels}): "
        f"{flops / 1e6:.3f} MFLOP/sample"
    )
    print(
        f"{'batch':>6} "
        + " ".join(f"{name + ' samples/s':>21} {'%lim':>5}" for name in RUNTIMES)
        + f" {'peak GF/s':>10} {'limit samples/s':>16}"
    )
    found: list[tuple[float, int, Cell]] = []
    for batch in batches:
        cells = {
            name: paired(fn, batch, flops, probe, args.reps, args.min_time)
            for name, fn in runners(wrapper, sess, batch).items()
        }
        found += [(cells[n].fraction, batch, cells[n]) for n in ("ort", "ort+iobind")]
        peak = statistics.median(c.peak_gflops for c in cells.values())
        row = " ".join(f"{cells[n].rate:>21,.0f} {cells[n].fraction:>5.0%}" for n in RUNTIMES)
        print(f"{batch:>6} {row} {peak:>10.1f} {peak * 1e9 / flops:>16,.0f}")
    _, best_batch, best = max(found, key=lambda t: t[0])
    return flops, best, best_batch


def op_breakdown(path: str, batch: int, threads: int, calls: int = 20) -> dict[str, float]:
    """ms per call by ONNX op type, from onnxruntime's own profiler, plus the run total."""
    z, y = inputs(batch)
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, profile_dir=tmp)
        run = iobound_runner(sess, z, y)
        for _ in range(calls + 1):
            run()
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: collections.Counter[str] = collections.Counter()
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["args"]["op_name"]] += e["dur"]
    scale = len(runs) * 1000.0  # microseconds summed over runs -> ms per call
    out = {op: us / scale for op, us in times.most_common()}
    out["(run total)"] = sum(runs) / scale
    return out


def explain_mlp(
    path: str, flops: int, best: Cell, batch: int, probe: PeakProbe, threads: int
) -> None:
    """Where the MLP's time goes in onnxruntime at its best batch size."""
    peak = max(probe.measure(0.2))
    breakdown = op_breakdown(path, batch, threads)
    total = breakdown.pop("(run total)")
    gemm = sum(v for k, v in breakdown.items() if k in GEMM_OPS)
    tail = sum(v for k, v in breakdown.items() if k in TAIL_OPS)
    print(
        f"\nmlp best: {best.rate:,.0f} samples/s at batch {batch}, {best.fraction:.0%} of the "
        f"peak-implied limit. onnxruntime profile at batch {batch} (iobind, peak now "
        f"{peak:.1f} GFLOP/s), {total:.2f} ms/call = {batch / total * 1e3:,.0f} samples/s:"
    )
    for op, ms in breakdown.items():
        print(f"  {op:<10} {ms:8.3f} ms {ms / total:6.1%}")
    gemm_gflops = batch * flops / (gemm / 1e3) / 1e9
    print(
        f"  GEMM nodes alone: {gemm_gflops:.1f} GFLOP/s ({gemm_gflops / peak:.0%} of peak); "
        f"elementwise tail {tail / total:.1%} of the call; other "
        f"{(total - gemm - tail) / total:.1%} (gather/concat/reshape, dispatch)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--archs", default="mlp,conv")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--spin", action="store_true", help="let ORT worker threads spin")
    args = parser.parse_args()
    SPIN["on"] = args.spin
    batches = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"threads {args.threads} (of {os.cpu_count()} CPUs), torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, ORT spinning {'on' if args.spin else 'off'}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    probe = PeakProbe(args.threads)
    runs = [probe.measure(args.min_time) for _ in range(args.reps)]
    mlas, mkl = (statistics.median(r[i] for r in runs) for i in (0, 1))
    print(
        f"matmul peak (1024^3 float32, median of {args.reps}): onnxruntime/MLAS {mlas:.1f} "
        f"GFLOP/s, torch/MKL {mkl:.1f} GFLOP/s; each row re-measures it beside the decoder"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            path = os.path.join(tmp, f"{arch}.onnx")
            flops, best, batch = bench_arch(arch, path, probe, batches, args)
            if arch == "mlp":
                explain_mlp(path, flops, best, batch, probe, args.threads)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
