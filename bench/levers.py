"""Screen the levers that make a CVAE's prior samples keep their labels (issue #12, item 5).

Each setting trains a CVAE on MNIST in a plain single-process loop (the model, loss and data code
of `trainer`, no Ray), draws 10,000 balanced samples from the prior at T = 1, and prints one row:
label fidelity (the eval judge on the samples), CAS (the judge's architecture trained on the
samples, tested on the real test split; fewer steps than eval's when screening), test ELBO (one
z per image, on the fixed-binarized test split) and wall time.

    .venv/bin/python -P bench/levers.py --epochs 10 baseline latent16 aux
    .venv/bin/python -P bench/levers.py --list

(-P keeps bench/ off sys.path, so `eval` is the package, not bench/eval.py.)

Settings start from configs/mnist.toml's model (MLP 512-256, latent 32, Bernoulli, dynamic
binarization, batch 128, lr 1e-3, KL warm-up 5) and change one lever each; `+` joins settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from eval.samples import sample_from_decoder
from trainer.config import LossConfig, ModelConfig
from trainer.datasets import dataset_fingerprint, load_dataset
from trainer.inputs import binarize_fixed, scale
from trainer.models import build_model, label_loss, training_loss

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
# Per dataset, the starting point: mnist is configs/mnist.toml, digits the CLI's defaults.
BASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "mnist": (
        {"model": "cvae", "arch": "mlp", "latent_dim": 32, "hidden_dims": (512, 256)},
        {"kl_warmup_epochs": 5},
        {"lr": 1e-3, "batch_size": 128, "binarize": True},
    ),
    "digits": ({"model": "cvae"}, {}, {"lr": 1e-3, "batch_size": 128, "binarize": False}),
}
TRAIN_KEYS = {"lr": float, "batch_size": int, "epochs": int, "grey_head": int}

# name -> overrides of (model, loss, train); one lever each.
LEVERS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "baseline": ({}, {}, {}),
    "latent8": ({"latent_dim": 8}, {}, {}),
    "latent16": ({"latent_dim": 16}, {}, {}),
    "latent64": ({"latent_dim": 64}, {}, {}),
    "nowarmup": ({}, {"kl_warmup_epochs": 0}, {}),
    "freebits0.25": ({}, {"free_bits": 0.25}, {}),
    "beta2": ({}, {"beta": 2.0}, {}),
    "beta0.5": ({}, {"beta": 0.5}, {}),
    "prior": ({"prior": "class"}, {}, {}),
    "aux": ({"label_head": True}, {"label_weight": 1.0}, {}),
    "aux0.3": ({"label_head": True}, {"label_weight": 0.3}, {}),
    "aux3": ({"label_head": True}, {"label_weight": 3.0}, {}),
    "aux10": ({"label_head": True}, {"label_weight": 10.0}, {}),
    "conv": ({"arch": "conv", "hidden_dims": (256,)}, {}, {}),
    "lr2e-3": ({}, {}, {"lr": 2e-3}),
}


def _override(part: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A named lever, or KEY=VALUE for any ModelConfig/LossConfig field, lr, batch_size, epochs."""
    if part in LEVERS:
        return LEVERS[part]
    key, sep, text = part.partition("=")
    fields = {
        cfg: {f.name: f.type for f in dataclasses.fields(cfg)} for cfg in (ModelConfig, LossConfig)
    }
    if sep and key in TRAIN_KEYS:
        return {}, {}, {key: TRAIN_KEYS[key](text)}
    for i, cfg in enumerate((ModelConfig, LossConfig)):
        if sep and key in fields[cfg]:
            try:
                value = json.loads(text)
            except ValueError:
                value = text  # a bare word: prior=class
            value = tuple(value) if isinstance(value, list) else value
            return ({key: value}, {}, {}) if i == 0 else ({}, {key: value}, {})
    raise SystemExit(f"unknown lever {part!r}; --list shows the named ones")


def parse_setting(name: str, dataset: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """'a+b' merges the overrides of levers a and b (later ones win)."""
    model, loss, train = (dict(d) for d in BASES[dataset])
    for part in name.split("+"):
        m, lo, t = _override(part)
        model.update(m)
        loss.update(lo)
        train.update(t)
    return model, loss, train


def train_model(
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    train: dict[str, Any],
    data: Any,
    epochs: int,
    probe: Callable[[torch.nn.Module], float] | None = None,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """The Ray loop's maths in one process: dynamic binarization, Adam, the same losses.

    `probe(model)` (label fidelity) runs after every epoch with `train["probe_every"]` > 0."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_model(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=train["lr"])
    x_all = torch.from_numpy(data["train_x"])
    y_all = torch.from_numpy(data["train_y"])
    n, batch = len(x_all), train["batch_size"]
    steps = n // batch
    log = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            grey = x = x_all[idx].float().div_(255.0)
            if train["binarize"]:
                x = torch.bernoulli(x, generator=gen)
            out = model(x, y_all[idx], grey=grey if train.get("grey_head") else None)
            loss = training_loss(out, loss_cfg, epoch + step / steps) + label_loss(out, loss_cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        log.append({"epoch": epoch + 1, **test_elbo(model, data, train["binarize"])})
        every = train.get("probe_every", 0)
        if probe is not None and every and (epoch + 1) % every == 0:
            log[-1]["label_fidelity"] = probe(model)
            print(f"  {log[-1]}", flush=True)
    return model, log


@torch.no_grad()
def test_elbo(model: torch.nn.Module, data: Any, binarize: bool) -> dict[str, float]:
    torch.manual_seed(2)
    x = torch.from_numpy(data["test_inputs"][binarize])
    y = torch.from_numpy(data["test_y"])
    total, kl, mus = 0.0, 0.0, []
    for start in range(0, len(x), 1000):
        out = model.sample_forward(x[start : start + 1000], y[start : start + 1000])
        total += float(out.elbo.sum())
        kl += float(out.kl.sum())
        mus.append(out.mu)
    active = int((torch.cat(mus).var(0) > 0.01).sum())  # Burda et al.'s active units
    return {"test_elbo": total / len(x), "test_kl": kl / len(x), "active_units": active}


def judge_module(path: str | None) -> ModuleType:
    """eval.judge, or a frozen copy (`git show REV:eval/judge.py > FILE`): one screen, one judge,
    while eval's judge moves on."""
    if path is None:
        return importlib.import_module("eval.judge")
    spec = importlib.util.spec_from_file_location("frozen_judge", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def fidelity(model: torch.nn.Module, judge: Any, data: Any) -> tuple[float, Any]:
    """The judge's accuracy on 10,000 balanced prior samples (T = 1), and the samples."""
    jm, names = data["judge_module"], data["class_names"]
    samples = sample_from_decoder(model, 10_000, names, seed=0)
    preds = jm.predict(judge.net, samples.images, data["device"])
    return jm.accuracy(preds, samples.labels, names)[0], samples


def score(model: torch.nn.Module, judge: Any, data: Any, cas_steps: int) -> dict[str, float]:
    names = data["class_names"]
    fid, samples = fidelity(model, judge, data)
    cas = float("nan")
    if cas_steps > 0:  # 0: fidelity only, for a quick screen
        jm, device = data["judge_module"], data["device"]
        spec = dataclasses.replace(judge.spec, steps=cas_steps)
        net = jm.train_classifier(spec, samples.images, samples.labels, device, "CAS")
        preds = jm.predict(net, data["test_images"], device)
        cas, _ = jm.accuracy(preds, data["test_y"], names)
    row = {"label_fidelity": fid, "cas": cas, "head_fidelity": float("nan")}
    if data.get("judge_onnx") is not None:  # a second referee: a JUDGE/judge.onnx
        probs = [
            data["judge_onnx"].predict(samples.images[i : i + 1000])[0]
            for i in range(0, 10_000, 1000)
        ]
        row["onnx_judge_fidelity"] = float(
            (np.concatenate(probs).argmax(1) == samples.labels).mean()
        )
    if model.label_head is not None:  # does the decoder fool its own classifier?
        with torch.no_grad():
            logits = model.label_head(torch.from_numpy(samples.images).float() / 255.0)
        row["head_fidelity"] = float((logits.argmax(1).numpy() == samples.labels).mean())
    return row


def load(dataset: str, data_dir: str | None) -> dict[str, Any]:
    train = load_dataset(dataset, "train", data_dir=data_dir)
    test = load_dataset(dataset, "test", data_dir=data_dir)
    return {
        "name": dataset,
        "train_x": train.images,
        "train_y": train.labels,
        "train": train,
        "test_images": test.images,
        "test_inputs": {True: binarize_fixed(test.images), False: scale(test.images)},
        "test_y": test.labels,
        "class_names": list(test.class_names),
        "shape": test.image_shape,
        "device": torch.device("cpu"),
    }


def load_judge(args: argparse.Namespace, data: dict[str, Any]) -> Any:
    jm = data["judge_module"] = judge_module(args.judge_module)
    spec = jm.JudgeSpec(image_shape=data["shape"], num_classes=10)
    train = data["train"]
    return jm.get_judge(
        spec,
        dataset_fingerprint(args.dataset),
        lambda: (train.images, train.labels),
        data["test_images"],
        data["test_y"],
        data["class_names"],
        data["device"],
        cache_dir=args.cache_dir,
    )


def run_setting(name: str, args: argparse.Namespace, data: Any, judge: Any) -> dict[str, Any]:
    m, lo, t = parse_setting(name, args.dataset)
    epochs = t.get("epochs", args.epochs)
    model_cfg = ModelConfig(image_shape=data["shape"], num_classes=10, **m)
    start = time.perf_counter()
    t["probe_every"] = args.probe_every
    probe = lambda net: fidelity(net, judge, data)[0]  # noqa: E731
    model, log = train_model(model_cfg, LossConfig(**lo), t, data, epochs, probe)
    row = {
        "setting": name,
        "epochs": epochs,
        **log[-1],
        "train_seconds": time.perf_counter() - start,
    }
    row |= score(model, judge, data, args.cas_steps)
    if args.save_dir:  # RUN/model, so `vaegen eval` and --score-runs can score it again
        save_run(Path(args.save_dir) / name.replace("+", "_"), model, args, t, lo, row)
    return row


def save_run(
    run: Path,
    model: torch.nn.Module,
    args: argparse.Namespace,
    train: dict[str, Any],
    loss: dict[str, Any],
    row: dict[str, Any],
) -> None:
    from trainer.checkpoint import save_model

    data_dir = args.data_dir if args.dataset == "mnist" else None
    keys = ("lr", "batch_size", "binarize")
    train_cfg = {"dataset": args.dataset, "data_dir": data_dir, "epochs": row["epochs"]}
    train_cfg |= {k: train[k] for k in keys} | {"loss": loss}
    names = [str(i) for i in range(10)]
    dataset = {
        "name": args.dataset,
        "image_shape": list(model.cfg.image_shape),
        "class_names": names,
    }
    save_model(run / "model", model, dataset=dataset, train=train_cfg, metrics=row)


def score_run(path: str, args: argparse.Namespace, data: Any, judge: Any) -> dict[str, Any]:
    """A model trained elsewhere (`vaegen train`), scored the same way."""
    from trainer.checkpoint import load_model

    model, info = load_model(path)
    row = {"setting": path, "epochs": info.train.get("epochs", 0), "train_seconds": float("nan")}
    row |= test_elbo(model, data, bool(info.train.get("binarize", False)))
    return row | score(model, judge, data, args.cas_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("settings", nargs="*", default=["baseline"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cas-steps", type=int, default=1000)
    parser.add_argument("--dataset", default="mnist", choices=sorted(BASES))
    parser.add_argument("--data-dir", default=str(SHARED_MNIST))
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy machine")
    parser.add_argument("--judge-module", help="a frozen copy of eval/judge.py to judge with")
    parser.add_argument("--onnx-judge", help="also report label fidelity by this judge.onnx")
    parser.add_argument("--probe-every", type=int, default=0, help="label fidelity every N epochs")
    parser.add_argument("--score-runs", action="store_true", help="settings are RUN folders")
    parser.add_argument("--save-dir", help="save each trained model as SAVE_DIR/SETTING/model")
    parser.add_argument("--cache-dir", default="runs/levers/judges")
    parser.add_argument("--log", default="runs/levers/levers.jsonl")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, overrides in LEVERS.items():
            print(f"{name:14} {overrides}")
        return
    torch.set_num_threads(args.threads)
    data = load(args.dataset, args.data_dir if args.dataset == "mnist" else None)
    judge = load_judge(args, data)
    if args.onnx_judge:
        from vaegen.judge_onnx import JudgeSession

        data["judge_onnx"] = JudgeSession(args.onnx_judge, threads=args.threads)
    print(f"judge {judge.spec.spec_hash()[:12]} test accuracy {judge.test_accuracy:.4f}")
    print(
        f"{'setting':36}{'epochs':>7}{'fidelity':>10}{'CAS':>8}{'test ELBO':>11}{'KL':>7}"
        f"{'active':>7}{'train s':>9}{'head fid.':>10}{'onnx fid.':>10}"
    )
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    for name in args.settings:
        run = score_run if args.score_runs else run_setting
        row = {"dataset": args.dataset, **run(name, args, data, judge)}
        row |= {"judge_accuracy": judge.test_accuracy, "cas_steps": args.cas_steps}
        print(
            f"{name:36}{row['epochs']:>7}{row['label_fidelity']:>10.4f}{row['cas']:>8.4f}"
            f"{row['test_elbo']:>11.2f}{row['test_kl']:>7.2f}{row['active_units']:>7}"
            f"{row['train_seconds']:>9.0f}"
            f"{row['head_fidelity']:>10.4f}{row.get('onnx_judge_fidelity', float('nan')):>10.4f}",
            flush=True,
        )
        with open(args.log, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
