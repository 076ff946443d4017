"""Eval throughput: IWAE (images x K per second) and FID/KID/PR time for 10k vs 10k MNIST images.

    .venv/bin/python bench/eval.py [--device auto|cpu|cuda] [--iwae-k 1000] [--iwae-images 500]
                                   [--num 10000] [--data-dir ../shared/data/mnist]

The model and the judge have random weights: only timings are reported, not quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# This file is named eval.py, and Python puts its folder first on sys.path: drop it, so that
# `eval` below is the package, not this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from eval import fid  # noqa: E402
from eval.device import default_max_decodes, resolve_device  # noqa: E402
from eval.judge import JudgeNet, JudgeSpec, save_judge_file  # noqa: E402
from eval.likelihood import evaluate_iwae, evaluate_likelihood  # noqa: E402
from eval.samples import sample_from_decoder  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402
from trainer.datasets import load_dataset  # noqa: E402
from trainer.models import build_model  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(dev: torch.device, fn, /, *args, **kwargs):  # noqa: ANN001, ANN202 - bench helper
    _sync(dev)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(dev)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--iwae-images", type=int, default=500)
    parser.add_argument("--num", type=int, default=10000, help="images per side for FID")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    device = resolve_device(args.device)
    test = load_dataset("mnist", "test", data_dir=args.data_dir)
    names = list(test.class_names)
    torch.manual_seed(0)
    cfg = ModelConfig(model="cvae", image_shape=test.image_shape, latent_dim=16)
    model = build_model(cfg).to(device).eval()
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, model {cfg.model}/{cfg.arch} "
        f"hidden {cfg.hidden_dims} latent {cfg.latent_dim}"
    )

    targets = test.images.astype(np.float32) / 255.0
    n_lik = min(len(targets), args.num)
    _, secs = _timed(
        device,
        evaluate_likelihood,
        model,
        targets[:n_lik],
        test.labels[:n_lik],
        device=device,
        batch_size=args.batch_size,
    )
    print(f"ELBO pass:  {n_lik} images in {secs:.2f}s = {n_lik / secs:,.0f} images/s")

    n, k = args.iwae_images, args.iwae_k
    evaluate_iwae(model, targets[:8], test.labels[:8], 8, device=device)  # warm-up
    _, secs = _timed(
        device,
        evaluate_iwae,
        model,
        targets[:n],
        test.labels[:n],
        k,
        device=device,
        batch_size=args.batch_size,
        max_decodes=default_max_decodes(device),
    )
    print(
        f"IWAE:       {n} images x K={k} in {secs:.2f}s = {n * k / secs:,.0f} images*K/s "
        f"(max_decodes {default_max_decodes(device)}); K=5000 on 10k images would take "
        f"{10000 * 5000 / (n * k / secs) / 60:.1f} min"
    )

    num = args.num
    fake, secs = _timed(
        device, sample_from_decoder, model, num, names, seed=0, device=device, batch_size=4096
    )
    print(f"sampling:   {num} decoder images in {secs:.2f}s = {num / secs:,.0f} images/s")

    real = test.images[:num]
    if len(real) < num:
        real = np.concatenate([real] * (num // len(real) + 1))[:num]
    spec = JudgeSpec(image_shape=test.image_shape, num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "judge.safetensors"
        torch.manual_seed(0)
        save_judge_file(path, JudgeNet(spec).eval(), spec, {"bench": True})
        times = {}
        for dtype in ("float64", "float32"):
            ex = fid.judge_extractor(path, dtype=dtype)
            fid.fidelity_metrics(real[:64], fake.images[:64], ex, kid_subsets=1)  # warm-up
            res, secs = _timed(
                device,
                fid.fidelity_metrics,
                real,
                fake.images,
                ex,
                real_labels=test.labels[:num],
                fake_labels=fake.labels,
                class_names=names,
                cuda=device.type == "cuda",
                batch_size=args.batch_size,
            )
            times[dtype] = secs
            print(
                f"FID+KID+PR+per-class FID, {num} vs {num}, judge {dtype}: {secs:.2f}s "
                f"(FID {res.fid:.3f}, KID subsets of {res.kid_subset_size})"
            )
            _, feat_secs = _timed(
                device,
                fid.fidelity_metrics,
                real,
                fake.images,
                ex,
                cuda=device.type == "cuda",
                batch_size=args.batch_size,
                kid_subsets=1,
            )
            print(f"  same with 1 KID subset: {feat_secs:.2f}s (features dominate below this)")
        print(f"float64 / float32 judge time: {times['float64'] / times['float32']:.2f}x")


if __name__ == "__main__":
    main()
