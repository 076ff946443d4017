"""Benchmark `vaegen generate` against the loops it replaces.

Prints, for N samples (default 1M) written as raw parquet by `run_generation` on this machine,
as the median of 3 interleaved rounds (this machine is shared and noisy):
- end-to-end samples/s of the job (Ray already started; its start is printed apart; each job
  starts its own actor pool, as the CLI does);
- the raw single-process onnxruntime loop on the same decoder (inputs + session.run, no
  writes), and the ratio job / raw ORT (target >= 0.8);
- a plain PyTorch script a user would otherwise write (a loop of torch decoder calls with
  parquet writes), and the ratio job / torch (target >= 1.5);
- the same two for the int8 copy of the decoder (exporter.quantize, as `vaegen export --int8`
  writes it): the raw int8 ORT loop and the int8 job, with int8 job / torch script (fp32;
  target >= 3.0) and int8 job / raw int8 loop (target >= 0.8). CPU only: onnxruntime's CUDA
  provider has no kernels for the int8 graph;
- peak RSS of the driver plus every Ray process under it, at 200k and at 2M samples
  (target: RSS(2M) <= 1.2 x RSS(200k)).

The decoder is the trainer's default CVAE MLP for MNIST-shaped data (latent 16, 10 classes,
1x28x28, Bernoulli mean) with random weights, exported by exporter.graph. Only the bench
imports torch and trainer; workers/ never does.

    .venv/bin/python bench/generate.py            # full run, several minutes on 2 cores
    .venv/bin/python bench/generate.py --quick    # smoke run, well under a minute of work
    .venv/bin/python bench/generate.py --gpus-per-worker 1   # CUDA: ORT loop, torch on cuda, job
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter.quantize import int8_path_for  # noqa: E402 - after the path is set
from workers.spec import default_batch_size  # noqa: E402

LATENT, CLASSES, SHAPE = 16, 10, (1, 28, 28)
LABELS = {  # short name for the per-round line, long name for the medians
    "raw": ("raw ORT", "raw ORT loop (1 process, default threads, no writes):"),
    "torch": ("torch script", "plain torch script (decoder calls + parquet writes):"),
    "job": ("vaegen generate", "vaegen generate (run_generation, Ray up):"),
    "raw8": ("raw int8 ORT", "raw int8 ORT loop (same, decoder.int8.onnx):"),
    "job8": ("int8 generate", "vaegen generate on decoder.int8.onnx:"),
}


def build_model(seed: int = 0):  # noqa: ANN201 - a trainer VAE, lazily typed
    """The trainer's default CVAE MLP for MNIST-shaped images, random weights."""
    import torch

    from trainer.config import ModelConfig
    from trainer.models import build_model as build

    torch.manual_seed(seed)
    cfg = ModelConfig(
        model="cvae", arch="mlp", image_shape=SHAPE, num_classes=CLASSES, latent_dim=LATENT
    )
    return build(cfg).eval()


def export_decoder(model, path: Path) -> str:  # noqa: ANN001
    """decoder.onnx through the exporter's own graph and metadata, and its int8 copy."""
    import onnx

    from exporter.graph import export_onnx
    from exporter.metadata import attach_metadata, build_metadata
    from exporter.quantize import int8_path_for, save_int8

    names = [str(i) for i in range(CLASSES)]
    proto = export_onnx(model)
    props = build_metadata(model.cfg, names, "0" * 64, "bench", "fp32")
    attach_metadata(proto, props)
    onnx.save(proto, str(path))
    save_int8(path, int8_path_for(path), props)
    return "exporter.graph.export_onnx"


def parity(module, onnx_path: Path) -> int:  # noqa: ANN001
    """Max pixel difference torch vs ORT on one batch (the two must be the same network)."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    z = rng.standard_normal((256, LATENT), dtype=np.float32)
    y = rng.integers(0, CLASSES, 256)
    with torch.no_grad():
        ref = (module.decode(torch.from_numpy(z), torch.from_numpy(y)) * 255).round().numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["image"], {"z": z, "y": y})[0]
    return int(np.abs(got.astype(int) - ref.astype(int)).max())


def raw_ort_loop(
    onnx_path: Path, n: int, batch: int, threads: int = 0, provider: str = "CPUExecutionProvider"
) -> float:
    """samples/s of the plainest ORT loop: draw inputs, session.run, keep nothing.

    threads=0 is onnxruntime's default (one per core), what a user's script gets.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=[provider])
    rng = np.random.default_rng(0)
    sess.run(["image"], {"z": np.zeros((8, LATENT), np.float32), "y": np.zeros(8, np.int64)})
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        z = rng.standard_normal((b, LATENT), dtype=np.float32)
        y = rng.integers(0, CLASSES, b)
        sess.run(["image"], {"z": z, "y": y})
    return n / (time.perf_counter() - t0)


def torch_script(module, n: int, batch: int, out: Path, device: str = "cpu") -> float:  # noqa: ANN001
    """samples/s of the script a user would write: torch decoder calls + parquet writes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    width = int(np.prod(SHAPE))
    schema = pa.schema(
        [("id", pa.int64()), ("label", pa.int64()), ("label_name", pa.string()),
         ("image", pa.binary(width))]
    )  # fmt: skip
    names = np.array([str(i) for i in range(CLASSES)], dtype=object)
    module = module.to(device)
    t0 = time.perf_counter()
    with torch.no_grad(), pq.ParquetWriter(out, schema) as writer:
        for start in range(0, n, batch):
            b = min(batch, n - start)
            z = torch.randn(b, LATENT, device=device)
            y = torch.randint(0, CLASSES, (b,), device=device)
            img = (module.decode(z, y) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            labels = y.cpu().numpy()
            table = pa.table(
                {
                    "id": pa.array(np.arange(start, start + b)),
                    "label": pa.array(labels),
                    "label_name": pa.array(names[labels], type=pa.string()),
                    "image": pa.FixedSizeBinaryArray.from_buffers(
                        pa.binary(width), b, [None, pa.py_buffer(img.reshape(b, -1))]
                    ),
                },
                schema=schema,
            )
            writer.write_table(table)
    module.to("cpu")
    return n / (time.perf_counter() - t0)


class TreeRss:
    """Samples the summed RSS of one process and all its descendants (its Ray included)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_detail: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total, detail = 0, {}
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except self._psutil.Error:
            return
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                name = proc.name()
            except self._psutil.Error:
                continue
            total += rss
            name = name.split("(")[0].replace(".submit", "")
            detail[name] = detail.get(name, 0) + rss
        if total > self.peak:
            self.peak, self.peak_detail = total, detail

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cli_peak_rss(  # noqa: ANN201
    onnx_path: Path, n: int, out: Path, batch: int, workers: int | None, gpus: float
):
    """Run `python -m workers` (= `vaegen generate`) in a fresh process; sample its tree."""
    import subprocess

    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "workers", str(onnx_path), "-n", str(n), "--out", str(out),
           "--batch-size", str(batch)]  # fmt: skip
    cmd += ["--workers", str(workers)] if workers else []
    cmd += ["--gpus-per-worker", str(gpus)] if gpus else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with TreeRss(proc.pid) as rss:
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"generate failed: {stderr.decode()[-2000:]}")
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    return rss, n / wall


def run_job(
    onnx_path: Path, n: int, out: Path, batch: int, workers: int | None, gpus: float = 0.0
) -> tuple[float, dict]:
    from workers.job import run_generation
    from workers.options import GenerateOptions
    from workers.spec import build_spec

    spec = build_spec(str(onnx_path), n, batch_size=batch)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    options = GenerateOptions(workers=workers, gpus_per_worker=gpus, show_progress=False)
    manifest = run_generation(spec, out, options)
    return n / (time.perf_counter() - t0), manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--samples", type=int, default=None, help="N for the throughput runs")
    parser.add_argument("--batch-size", type=int, default=None, help="all loops (1024; GPU 8192)")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="> 0: every loop on CUDA"
    )
    parser.add_argument("--workers", type=int, default=None, help="actors (default: auto)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the 3 loops (3)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the 200k/2M RSS runs")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder")
    args = parser.parse_args()
    gpu = args.gpus_per_worker > 0
    args.batch_size = args.batch_size or default_batch_size(args.gpus_per_worker)
    n = args.samples or (50_000 if args.quick else 1_000_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    rss_sizes = (20_000, 200_000) if args.quick else (200_000, 2_000_000)

    import onnxruntime as ort
    import pyarrow
    import ray
    import torch

    from vaegen.raycluster import init_ray

    if gpu:
        ort.preload_dlls()  # onnxruntime-gpu finds the CUDA/cuDNN libraries of the nvidia wheels
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SystemExit("--gpus-per-worker: this onnxruntime has no CUDAExecutionProvider")
        if not torch.cuda.is_available():
            raise SystemExit("--gpus-per-worker: torch sees no CUDA device")
    provider = "CUDAExecutionProvider" if gpu else "CPUExecutionProvider"
    device = "cuda" if gpu else "cpu"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vaegen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs; onnxruntime {ort.__version__}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), pyarrow "
          f"{pyarrow.__version__}, ray {ray.__version__}; load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))  # fmt: skip
    module = build_model()
    onnx_path = work / "decoder.onnx"
    how = export_decoder(module, onnx_path)
    print(f"decoder: trainer CVAE MLP, latent {LATENT} + {CLASSES} classes -> hidden "
          f"{tuple(reversed(module.cfg.hidden_dims))} -> {SHAPE}; ONNX by {how}; torch vs ORT "
          f"max pixel diff {parity(module, onnx_path)}")  # fmt: skip
    print(f"N = {n:,} samples, batch {args.batch_size}, raw uint8 parquet, {provider} / {device}")

    t0 = time.perf_counter()
    init_ray()
    print(f"Ray start: {time.perf_counter() - t0:.1f} s (not counted below)")
    # This machine is shared and noisy: interleave the loops, round after round, and compare
    # medians. Every round's job starts its own actor pool (the CLI's cost).
    int8_path = int8_path_for(onnx_path)
    loops = ["raw", "torch", "job"] + ([] if gpu else ["raw8", "job8"])
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for round_ in range(1, args.rounds + 1):
        rates["raw"].append(raw_ort_loop(onnx_path, n, args.batch_size, provider=provider))
        rates["torch"].append(
            torch_script(module, n, args.batch_size, work / "torch.parquet", device)
        )
        for key, path in (("job", onnx_path), ("job8", int8_path))[: 1 if gpu else 2]:
            rate, manifest = run_job(
                path, n, work / "ds", args.batch_size, args.workers, args.gpus_per_worker
            )
            rates[key].append(rate)
            shutil.rmtree(work / "ds")
        if not gpu:
            rates["raw8"].append(raw_ort_loop(int8_path, n, args.batch_size))
        print(f"round {round_}: " + "  ".join(f"{LABELS[k][0]} {rates[k][-1]:9,.0f}" for k in loops)
              + " samples/s")  # fmt: skip
    ex = manifest["execution"]
    med = {k: statistics.median(v) for k, v in rates.items()}

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    print(f"medians of {args.rounds} rounds (samples/s):")
    for key in loops:
        print(f"  {LABELS[key][1]:<54} {med[key]:10,.0f}")
    print(f"  (jobs: {ex['workers']} actors x {ex['threads']} ORT thread(s), "
          f"{manifest['num_shards']} shards)")  # fmt: skip
    print(f"  job / raw ORT loop, median of rounds: {ratio('job', 'raw'):5.2f}   (target >= 0.8)")
    print(f"  job / torch script, median of rounds: {ratio('job', 'torch'):5.2f}   (target >= 1.5)")
    if not gpu:
        print(f"  int8 job / torch script (fp32):       {ratio('job8', 'torch'):5.2f}   "
              "(target >= 3.0)")  # fmt: skip
        print(f"  int8 job / raw int8 ORT loop:         {ratio('job8', 'raw8'):5.2f}   "
              "(target >= 0.8)")  # fmt: skip
        # What no engine can beat here: every core decoding at one ORT thread's rate (the most
        # efficient layout, the job's), with nothing else to do: no writes, no hashing, no Ray.
        # (On a GPU the raw CUDA loop above is that ceiling.)
        cores = os.cpu_count() or 1
        for key, path in (("job", onnx_path), ("job8", int8_path)):
            ceiling = raw_ort_loop(path, max(n // 4, 50_000), args.batch_size, threads=1) * cores
            print(f"  decode-only ceiling, {'int8' if key == 'job8' else 'fp32'} ({cores} cores x "
                  f"1-thread ORT loop): {ceiling:10,.0f}  = {ceiling / med['torch']:4.2f} x torch "
                  f"script; job = {med[key] / ceiling:4.2f} of it")  # fmt: skip
    print("  load average (1/5/15 min) at the end: "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))  # fmt: skip
    if args.quick:
        print("  (--quick: at this N the pool's start-up weighs more; the targets are for 1M)")

    ray.shutdown()

    if not args.skip_rss:
        peaks = []
        for size in rss_sizes:
            rss, r = cli_peak_rss(
                onnx_path, size, work / "ds", args.batch_size, args.workers, args.gpus_per_worker
            )
            peaks.append(rss.peak)
            top = sorted(rss.peak_detail.items(), key=lambda kv: -kv[1])[:4]
            print(f"peak RSS of `vaegen generate` (driver + its Ray), {size:>9,} samples: "
                  f"{rss.peak / 2**20:6,.0f} MiB  (cold CLI {r:,.0f} samples/s; largest: "
                  + ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in top) + ")")  # fmt: skip
        print(f"  RSS({rss_sizes[1]:,}) / RSS({rss_sizes[0]:,}): {peaks[1] / peaks[0]:5.2f}"
              "   (target <= 1.2)")  # fmt: skip
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
