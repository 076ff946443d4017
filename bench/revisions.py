"""A/B of `vaegen generate` throughput: this working tree against an earlier git revision.

Both trees run the same command on the same decoder.onnx (bench/generate.py's random-weight
MNIST CVAE), N samples of raw parquet, in interleaved rounds (this machine is noisy), each as a
fresh `vaegen generate` process with its own local Ray. Prints each round, the medians, and
the ratio this tree / the revision. The job's own throughput is taken from its manifest
(`execution.seconds`, Ray's start excluded), and the process wall time is printed beside it.

    .venv/bin/python bench/revisions.py --rev aa1ba62    # before #11's job split and #16
    .venv/bin/python bench/revisions.py --rev HEAD~3 --samples 200000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from generate import build_model, export_decoder  # noqa: E402 - after the path is set

# The venv's editable install would lend the revision any module it lacks (from this tree):
# drop its finder, so each tree runs only its own code.
_ENTRY = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
    " if not getattr(f, '__module__', '').startswith('__editable__')];"
    " from vaegen.cli import main; main()"
)


def _worktree(rev: str, parent: Path) -> Path:
    path = parent / "rev"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path


def _run(tree: Path, decoder: Path, out: Path, samples: int) -> tuple[float, float]:
    """(samples/s of the job from its manifest, process wall seconds) for one tree."""
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the tree's packages before the venv's
    cmd = [sys.executable, "-c", _ENTRY, "generate"]
    cmd += [str(decoder), "--num-samples", str(samples), "--out", str(out), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: generate exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    execution = json.loads((out / "manifest.json").read_text())["execution"]
    rate = execution["generated_samples"] / execution["seconds"]
    shutil.rmtree(out)
    return rate, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO.parent) as tmp:
        tmp_path = Path(tmp)
        decoder = tmp_path / "decoder.onnx"
        export_decoder(build_model(), decoder)
        trees = {"this tree": REPO, args.rev: _worktree(args.rev, tmp_path)}
        try:
            rates = _rounds(trees, decoder, tmp_path, args)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(trees[args.rev])], check=False)  # fmt: skip
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, value in med.items():
        print(f"median {name:>12}: {value:>10,.0f} samples/s")
    print(f"ratio this tree / {args.rev}: {med['this tree'] / med[args.rev]:.3f}")


def _rounds(
    trees: dict[str, Path], decoder: Path, tmp: Path, args: argparse.Namespace
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, tree in trees.items():
            rate, wall = _run(tree, decoder, tmp / "out", args.samples)
            rates[name].append(rate)
            print(f"round {i + 1} {name:>12}: {rate:>10,.0f} samples/s  (process {wall:.1f} s)")
    return rates


if __name__ == "__main__":
    main()
