"""Choose the int8 decoder's quantization scheme by measurement (exporter/quantize.py).

For the fp32 decoder and each scheme (dynamic or static QDQ, per-tensor or per-channel
weights), prints samples/s of session.run at 1 and 2 onnxruntime threads (the workers' session
options, batch 1024, median of interleaved rounds: this machine is shared), and the pixel
change against fp32 on 10,000 prior samples (z ~ N(0, I), classes balanced): mean and max
|image diff| in levels of 255, and the share of pixels that changed. With --quality (and --run),
also what the export check measures (exporter.int8_check): label fidelity and FID (judge
features, against the real test split) of the same samples decoded by fp32 and by each scheme.

    .venv/bin/python -P bench/int8.py --run RUN     # a trained checkpoint (RUN/model)
    .venv/bin/python -P bench/int8.py --run RUN --quality   # + judge scores (cached judge)
    .venv/bin/python -P bench/int8.py               # random-weight MNIST CVAE MLP (speed only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter.quantize import QuantScheme, save_int8  # noqa: E402 - after the path is set

SCHEMES = [QuantScheme(mode, chan) for mode in ("dynamic", "static") for chan in (False, True)]


def fp32_decoder(run: Path | None, out: Path) -> dict[str, str]:
    """decoder.onnx of RUN through the real exporter, or of a random default MNIST CVAE."""
    from exporter.export import export_decoder

    if run is None:
        import torch

        from trainer.checkpoint import save_model
        from trainer.config import ModelConfig
        from trainer.models import build_model

        torch.manual_seed(0)
        cfg = ModelConfig(model="cvae", image_shape=(1, 28, 28), num_classes=10, latent_dim=16)
        run = out.parent / "random-run"
        dataset = {"name": "random", "class_names": [str(i) for i in range(10)]}
        save_model(run / "model", build_model(cfg), dataset, {}, {})
    return export_decoder(run, out=out).metadata


def session(path: Path, threads: int):  # noqa: ANN201
    from workers.sampler import make_session

    return make_session(path.read_bytes(), gpu=False, threads=threads)


def feeds(meta: dict[str, str], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"z": rng.standard_normal((n, int(meta["latent_dim"])), dtype=np.float32)}
    if int(meta["num_classes"]):
        out["y"] = (np.arange(n) % int(meta["num_classes"])).astype(np.int64)
    return out


def rate(sess, feed: dict[str, np.ndarray], min_time: float) -> float:  # noqa: ANN001
    sess.run(["image"], feed)
    calls, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_time or calls == 0:
        sess.run(["image"], feed)
        calls += 1
    return calls * len(feed["z"]) / elapsed


def images(path: Path, feed: dict[str, np.ndarray], batch: int = 1000) -> np.ndarray:
    sess = session(path, os.cpu_count() or 1)
    n = len(feed["z"])
    parts = [
        sess.run(["image"], {k: v[i : i + batch] for k, v in feed.items()})[0]
        for i in range(0, n, batch)
    ]
    return np.concatenate(parts).astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="trained RUN (default: random)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=10_000, help="for the pixel statistics")
    parser.add_argument("--quality", action="store_true", help="judge scores (needs --run)")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "decoder.onnx"
        meta = fp32_decoder(args.run, fp32)
        files = {"fp32": fp32}
        for scheme in SCHEMES:
            files[scheme.name] = Path(tmp) / f"{scheme.name}.onnx"
            save_int8(fp32, files[scheme.name], meta, scheme)
        print(f"decoder: {meta['model']} {meta['arch']} latent {meta['latent_dim']}, "
              f"{meta['num_classes']} classes, {meta['image_shape']}, "
              f"{'RUN ' + str(args.run) if args.run else 'random weights'}; batch {args.batch}; "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        feed = feeds(meta, args.batch, seed=1)
        sessions = {(k, t): session(p, t) for k, p in files.items() for t in threads}
        rates: dict[tuple[str, int], list[float]] = {key: [] for key in sessions}
        for _ in range(args.rounds):
            for key, sess in sessions.items():
                rates[key].append(rate(sess, feed, args.min_time))
        big = feeds(meta, args.samples)
        ref = images(fp32, big)
        head = " ".join(f"{f'{t} thr samples/s':>17} {'x fp32':>6}" for t in threads)
        print(f"{'decoder':<22} {head} {'mean|d|':>8} {'max|d|':>6} {'changed':>8}")
        for name, path in files.items():
            cells = []
            for t in threads:
                med = statistics.median(rates[(name, t)])
                ratio = statistics.median(
                    a / b for a, b in zip(rates[(name, t)], rates[("fp32", t)], strict=True)
                )
                cells.append(f"{med:>17,.0f} {ratio:>6.2f}")
            diff = np.abs(images(path, big) - ref)
            print(f"{name:<22} {' '.join(cells)} {diff.mean():>8.3f} {diff.max():>6d} "
                  f"{np.count_nonzero(diff) / diff.size:>8.2%}")  # fmt: skip
        print(f"(medians of {args.rounds} interleaved rounds; |d| in levels of 255 over "
              f"{args.samples:,} prior samples; load {os.getloadavg()[0]:.1f})")  # fmt: skip
        if args.quality and args.run is not None:
            quality(args.run, files, meta, args.samples)


def quality(run: Path, files: dict[str, Path], meta: dict[str, str], samples: int) -> None:
    """Label fidelity and FID of each int8 scheme against fp32, as `vaegen export --int8`."""
    from exporter.int8_check import QualityCheck, check_quality
    from exporter.int8_judge import judge_for_run
    from trainer.checkpoint import read_model_info

    judge = judge_for_run(read_model_info(run), None)
    print(f"quality ({judge.description}; {samples:,} samples, classes balanced):")
    for name, path in list(files.items())[1:]:
        report = check_quality(files["fp32"], path, meta, judge, QualityCheck(num_samples=samples))
        print(f"  {name:<22} fidelity {report.fidelity_int8} vs fp32 {report.fidelity_fp32}, "
              f"FID {report.fid_int8:.3f} vs {report.fid_fp32:.3f} "
              f"(ratio {report.fid_ratio:.3f}) {'ok' if report.passed else 'FAILED'}")  # fmt: skip


if __name__ == "__main__":
    main()
