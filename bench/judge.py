"""The judge recipe on MNIST and Fashion-MNIST: real test accuracy and training time.

Trains eval.judge's JudgeNet with the shipped JudgeSpec (or overrides) on each dataset's real
training split, on CPU, and prints per dataset: test accuracy against its target (MNIST >= 0.99,
Fashion-MNIST >= 0.91), wall time against the 4-minute budget, the process's CPU time (on a
shared machine wall time is inflated; CPU time / threads is what an idle machine would take)
and the load average before and after.

    .venv/bin/python -P bench/judge.py [--datasets mnist,fashion-mnist] [--data-root DIR]
                                       [--set steps=3000 --set channels=32,64,128 ...]
                                       [--cpus 0,1]

(-P: without it, bench/ comes first on sys.path and `eval` is bench/eval.py.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from eval.judge import JudgeSpec, accuracy, predict, train_classifier
from trainer.datasets import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGETS = {"mnist": 0.99, "fashion-mnist": 0.91}
BUDGET_S = 240.0


def _override(spec: JudgeSpec, pairs: list[str]) -> JudgeSpec:
    """key=value overrides of JudgeSpec fields; tuples as comma-separated lists."""
    changes: dict[str, Any] = {}
    types = {f.name: f.type for f in dataclasses.fields(JudgeSpec)}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown JudgeSpec field {key!r}; fields: {', '.join(types)}")
        kind = str(types[key])
        if "tuple" in kind:
            changes[key] = tuple(int(v) for v in value.split(","))
        elif "float" in kind:
            changes[key] = float(value)
        else:
            changes[key] = int(value)
    return dataclasses.replace(spec, **changes)


def bench(name: str, data_root: Path, overrides: list[str]) -> dict[str, Any]:
    train = load_dataset(name, "train", data_dir=data_root / name)
    test = load_dataset(name, "test", data_dir=data_root / name)
    spec = _override(JudgeSpec(image_shape=train.image_shape, num_classes=10), overrides)
    cpu = torch.device("cpu")
    load_before = os.getloadavg()[0]
    wall, cpu_time = time.perf_counter(), time.process_time()
    net = train_classifier(spec, train.images, train.labels, cpu)
    wall, cpu_time = time.perf_counter() - wall, time.process_time() - cpu_time
    acc, per_class = accuracy(predict(net, test.images, cpu), test.labels, list(test.class_names))
    return {
        "dataset": name,
        "test_accuracy": round(acc, 4),
        "target": TARGETS.get(name),
        "meets_target": acc >= TARGETS.get(name, 0.0),
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu_time, 1),
        "threads": len(os.sched_getaffinity(0)),  # what train_classifier runs on
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "worst_class": min(per_class.items(), key=lambda kv: kv[1]),
        "spec": {k: v for k, v in spec.to_dict().items() if k not in ("image_shape",)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist,fashion-mnist")
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--set", action="append", default=[], help="JudgeSpec field=value")
    parser.add_argument(
        "--cpus", default=None, help="pin to these CPUs, e.g. 0 or 0,1 (the judge uses them all)"
    )
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    for name in args.datasets.split(","):
        row = bench(name, args.data_root, args.set)
        print(json.dumps(row), flush=True)
        idle = row["train_cpu_s"] / row["threads"]
        print(
            f"{name}: test accuracy {row['test_accuracy']:.4f} (target {row['target']}, "
            f"{'met' if row['meets_target'] else 'MISSED'}); training {row['train_wall_s']:.0f}s "
            f"wall, {row['train_cpu_s']:.0f}s CPU (~{idle:.0f}s on {row['threads']} idle cores; "
            f"budget {BUDGET_S:.0f}s); load {row['load_before']} -> {row['load_after']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
