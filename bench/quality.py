"""The quality table: train and score the shipped configs, write docs/quality.md.

    .venv/bin/python bench/quality.py [--rows mnist-cvae,fashion-cvae,...] [--iwae-k 5000]
        [--epochs N] [--out runs/quality] [--min-confidence 0.9] [--no-filter]
        [--doc docs/quality.md]

Each row is a shipped config under configs/, run through the public CLI exactly as a user runs
it (`vaegen pipeline --config`), with `out` and the eval's IWAE K overridden. A conditional
row is also generated again through the judge filter (`vaegen generate --judge ...
--min-confidence P`) and scored (`vaegen eval --samples`). Rows already run are reused
(the pipeline skips fresh stages), so an interrupted table resumes where it stopped.
Every figure in the table comes from the runs' metrics.json; the published figures beside them
are quoted from the papers and peers named in PUBLISHED. The table holds every row measured into
--out so far and replaces only the part of --doc between the BEGIN and END markers. `--epochs N`
trains each row N epochs instead of its config's (rows `name@Nep`), for comparisons at equal
epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaegen.atomic import write_bytes_atomic

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VAEGEN = [str(Path(sys.executable).with_name("vaegen"))]


@dataclass(frozen=True)
class Row:
    name: str
    config: str  # under configs/
    note: str
    published: str = ""


ROWS = (
    Row("mnist-cvae", "mnist.toml", "shipped MNIST CVAE (MLP)"),
    Row("fashion-cvae", "fashion-mnist.toml", "shipped Fashion-MNIST CVAE"),
    Row(
        "fashion-cvae-nolevers",
        "fashion-nolevers.toml",
        "fashion-mnist.toml without MNIST's label levers (no label head, N(0, I) prior)",
    ),
    Row(
        "fashion-perceptual",
        "fashion-perceptual.toml",
        "fashion-mnist.toml + feature perceptual loss (W=0.3)",
    ),
    Row("fashion-vaegan", "fashion-vaegan.toml", "fashion-mnist.toml + VAE-GAN (W=1)"),
    Row(
        "mnist-vae",
        "mnist-vae.toml",
        "unconditional VAE, dynamically binarized MNIST",
        "Burda et al. 2016 Table 1, VAE k=1: 86.76 nats",
    ),
    Row(
        "mnist-elbo",
        "mnist-elbo.toml",
        "ELBO, MLP of the IWAE rows",
        "Burda et al. 2016 Table 1, VAE k=1: 86.76 nats",
    ),
    Row(
        "mnist-iwae5",
        "mnist-iwae5.toml",
        "IWAE k=5",
        "Burda et al. 2016 Table 1, IWAE k=5: 85.54 nats",
    ),
    Row(
        "mnist-iwae50",
        "mnist-iwae50.toml",
        "IWAE k=50",
        "Burda et al. 2016 Table 1, IWAE k=50: 84.78 nats",
    ),
    Row("mnist-dreg5", "mnist-dreg5.toml", "IWAE-DReG k=5", "Tucker et al. 2019"),
    Row(
        "mnist-perceptual", "mnist-perceptual.toml", "mnist.toml + feature perceptual loss (W=0.3)"
    ),
    Row("mnist-vaegan", "mnist-vaegan.toml", "mnist.toml + VAE-GAN (W=1)"),
    Row(
        "mnist-m2",
        "mnist-m2.toml",
        "semi-supervised M2 from 10 labels per class (100 labels)",
        "Kingma et al. 2014 Table 1, M2 with 100 labels: 11.97% test error",
    ),
    Row(
        "mnist-pythae",
        "mnist-pythae.toml",
        "Pythae's recipe (784-512-16, 10 epochs)",
        "pytorch/examples VAE 96.7, Pythae VAE 97.6 nats (K=1000, this machine)",
    ),
)

BEGIN, END = "<!-- quality-table: begin (bench/quality.py) -->", "<!-- quality-table: end -->"

PUBLISHED = """\
- Burda, Grosse, Salakhutdinov 2016, *Importance Weighted Autoencoders*, Table 1 (MNIST, one
  stochastic layer, NLL estimated with k=5000): VAE k=1 86.76, VAE k=50 86.35, IWAE k=5 85.54,
  IWAE k=50 84.78 nats. Their models train for 3^8 passes schedule (3280 epochs), ours for tens.
- Peers measured on this kind of machine (`../shared/data/README.md`): pytorch/examples' VAE
  (784-400-20) 96.7 nats and Pythae 0.1.2's VAE (784-512-16) 97.6 nats after 10 epochs, IWAE
  K=1000 on the binarized test set.
- Kingma et al. 2014, *Semi-supervised learning with deep generative models*, Table 1: M2 with
  100 labels 11.97% test error, M1+M2 3.33%.
"""


def _run(cmd: list[str], log: Path) -> float:
    """Run one CLI command, its output appended to `log`; the wall time in seconds."""
    started = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ " + " ".join(cmd) + "\n")
        handle.flush()
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - started


def row_name(row: Row, epochs: int | None) -> str:
    """A row's name in the table; `name@Nep` when --epochs overrides the config's."""
    return row.name if epochs is None else f"{row.name}@{epochs}ep"


def _write_config(row: Row, out: Path, args: argparse.Namespace) -> Path:
    name = row_name(row, args.epochs)
    raw = tomllib.loads((ROOT / "configs" / row.config).read_text())
    raw["out"] = str(out / name)
    raw.setdefault("eval", {})["iwae_k"] = args.iwae_k
    if args.epochs is not None:
        raw["train"]["epochs"] = args.epochs
    if "data_dir" in raw.get("train", {}):
        raw["train"]["data_dir"] = str(Path(raw["train"]["data_dir"]).resolve())
    lines = [f'out = "{raw.pop("out")}"']
    for section, values in raw.items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = out / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _judge(dataset: str, data_dir: str, out: Path, log: Path) -> Path:
    judge = out / "judges" / dataset
    if not (judge / "judge.onnx").is_file():
        _run(
            [*VAEGEN, "judge", "--dataset", dataset, "--data-dir", data_dir, "--out", str(judge)],
            log,
        )
    return judge


def _filtered(
    row_out: Path, train: dict[str, Any], judge: Path, args: argparse.Namespace, log: Path
) -> Path:
    """Generate the same spec again through the judge filter and score it."""
    report = row_out / "report-filtered"
    if (report / "metrics.json").is_file():
        return report
    spec = json.loads((row_out / "dataset" / "manifest.json").read_text())["spec"]
    dataset = row_out / "dataset-filtered"
    _run(
        [*VAEGEN, "generate", str(row_out / "run" / "export" / "decoder.onnx"),
         "--num-samples", str(spec["num_samples"]), "--seed", str(spec["seed"]),
         "--judge", str(judge / "judge.onnx"), "--min-confidence", str(args.min_confidence),
         "--out", str(dataset), "--overwrite"],
        log,
    )  # fmt: skip
    _run(
        [*VAEGEN, "eval", str(row_out / "run"), "--samples", str(dataset), "--cas", "--fid",
         "--judge", str(judge), "--out", str(report)],
        log,
    )  # fmt: skip
    return report


def _train_seconds(run: Path) -> float | None:
    log = run / "train_log.jsonl"
    if not log.is_file():
        return None
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(float(e.get("epoch_seconds", 0.0)) for e in epochs) or None


def run_row(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = row_name(row, args.epochs)
    log = out / f"{name}.log"
    config = _write_config(row, out, args)
    wall = _run([*VAEGEN, "pipeline", "--config", str(config)], log)
    row_out = out / name
    metrics = json.loads((row_out / "report" / "metrics.json").read_text())
    train = tomllib.loads(config.read_text())["train"]
    result = {"row": name, "base": row.name, "metrics": metrics, "pipeline_seconds": wall}
    result["command"] = _command(row, args)
    result["train_seconds"] = _train_seconds(row_out / "run")
    result["machine"] = f"{time.strftime('%Y-%m-%d')}, {_machine()}"
    if metrics["run"]["model"] == "cvae" and not args.no_filter:
        data_dir = str(train.get("data_dir", SHARED / train["dataset"]))
        judge = _judge(train["dataset"], data_dir, out, log)
        filtered = _filtered(row_out, train, judge, args, log)
        result["filtered"] = json.loads((filtered / "metrics.json").read_text())
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    _keep(result, Path(args.doc))
    return result


def _command(row: Row, args: argparse.Namespace) -> str:
    cmd = f".venv/bin/python bench/quality.py --rows {row.name} --iwae-k {args.iwae_k}"
    if args.epochs is not None:
        cmd += f" --epochs {args.epochs}"
    return cmd + (" --no-filter" if args.no_filter else f" --min-confidence {args.min_confidence}")


def _archive(doc: Path) -> Path:
    """Where each measured row's result is kept beside the doc, committed: a fresh clone's table
    keeps the rows measured by earlier sessions (on other machines, each row says which)."""
    return doc.parent / "quality-rows"


def _keep(result: dict[str, Any], doc: Path) -> None:
    archive = _archive(doc)
    archive.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1) + "\n"
    write_bytes_atomic(archive / f"{result['row']}.json", text.encode())


def load_results(out: Path, doc: Path) -> list[dict[str, Any]]:
    """Every row measured so far, in ROWS order: the archive beside `doc`, then `out`'s rows
    (this run's and earlier ones'), which replace archived rows of the same name."""
    order = {r.name: i for i, r in enumerate(ROWS)}
    paths = [*sorted(_archive(doc).glob("*.json")), *sorted(out.glob("*.json"))]
    by_name = {}
    for path in paths:
        res = json.loads(path.read_text())
        by_name[res.get("row")] = res
    results = list(by_name.values())
    results = [r for r in results if r.get("row") and "metrics" in r]
    for res in results:  # rows measured before "base" was recorded
        res.setdefault("base", res["row"].split("@")[0])
    return sorted(results, key=lambda r: (order.get(r["base"], len(order)), r["row"]))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _get(data: dict[str, Any] | None, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


COLUMNS = (
    ("IWAE NLL (nats)", "likelihood.iwae_nll_nats", 2),
    ("bits/dim", "likelihood.iwae_nll_bits_per_dim", 4),
    ("K", "likelihood.iwae_k", 0),
    ("test ELBO", "likelihood.elbo_nats", 2),
    ("active units", "likelihood.active_units", 0),
    ("FID (judge)", "fid.fid", 2),
    ("precision", "fid.precision", 3),
    ("recall", "fid.recall", 3),
    ("CAS", "cas.cas_accuracy", 4),
    ("real acc.", "cas.real_accuracy", 4),
    ("label fid.", "cas.label_fidelity", 4),
    ("near-copy rate", "memorization.near_copy_rate", 4),
    ("judge acc.", "judge.test_accuracy", 4),
    ("M2 classifier acc.", "classifier.test_accuracy", 4),
)


def _table(results: list[dict[str, Any]]) -> str:
    head = ["row", *(c[0] for c in COLUMNS), "label fid. (filtered)", "train s", "measured"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        cells = [res["row"]]
        cells += [_fmt(_get(res["metrics"], key), digits) for _, key, digits in COLUMNS]
        cells.append(_fmt(_get(res.get("filtered"), "cas.label_fidelity"), 4))
        cells.append(_fmt(res.get("train_seconds"), 0))
        cells.append(_short_machine(res.get("machine")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short_machine(machine: str | None) -> str:
    """'2026-12-06, Intel Xeon' from a result's machine line (date, CPU, cores, Python)."""
    if not machine:
        return "—"
    date, _, rest = machine.partition(", ")
    return f"{date}, {rest.split(',')[0].replace('(R)', '').replace(' Processor', '')}"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _row_note(res: dict[str, Any], rows: dict[str, Row]) -> str:
    row = rows.get(res["base"])
    if row is None:
        return f"- **{res['row']}**"
    note = f"- **{res['row']}**: {row.note}."
    return note + (f" Published: {row.published}." if row.published else "")


def write_doc(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = {r.name: r for r in ROWS}
    notes = "\n".join(_row_note(res, rows) for res in results)
    cmds = "\n".join(res.get("command") or f"(row {res['row']})" for res in results)
    out = Path(args.out).resolve()
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    text = (
        "## The table\n\n"
        f"Written {time.strftime('%Y-%m-%d')} on {_machine()}, no GPU, from every row in"
        f" `{where}` and `docs/quality-rows/` (rows kept from earlier sessions; the `measured`"
        " column says when and on which CPU). Reproduce each row with:\n\n"
        f"```\n{cmds}\n```\n\n"
        f"{_table(results)}\n\n"
        "IWAE NLL on the MNIST test set binarized once under seed 0 (`../shared/data/README.md`)"
        " for Bernoulli models; judge-based figures (FID, precision/recall, CAS, label fidelity)"
        " use the dataset's judge, whose own test accuracy is in the `judge acc.` column.\n"
        f"Label fidelity (filtered) is the dataset generated with `--min-confidence"
        f" {args.min_confidence}`.\n\n"
        f"### Rows\n\n{notes}\n\n### Published figures for the same settings\n\n{PUBLISHED}"
    )
    _write_between_markers(Path(args.doc), text)


def _write_between_markers(doc: Path, text: str) -> None:
    """Replace the doc's generated part (between the markers) and keep its written analysis."""
    block = f"{BEGIN}\n{text}\n{END}\n"
    old = doc.read_text() if doc.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        block = head + block + rest.split(END, 1)[1].lstrip("\n")
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(doc, block.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="mnist-cvae,fashion-cvae,mnist-vae")
    parser.add_argument("--iwae-k", type=int, default=5000)
    parser.add_argument("--min-confidence", type=float, default=0.9)
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "quality.md"))
    parser.add_argument("--no-filter", action="store_true", help="Skip the filtered datasets.")
    parser.add_argument(
        "--epochs", type=int, default=None, help="Train every row this long (rows `name@Nep`)."
    )
    args = parser.parse_args()
    known = {r.name: r for r in ROWS}
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(known)}")
    for name in names:
        print(f"[{name}] running", flush=True)
        run_row(known[name], args)
        write_doc(load_results(Path(args.out), Path(args.doc)), args)
        print(f"[{name}] done", flush=True)
    print(Path(args.doc).read_text())


if __name__ == "__main__":
    main()
