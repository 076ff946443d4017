"""End to end: `evaluate` and `vaegen eval` write metrics.json with the documented keys, the
HTML report and its figures; bad input exits with code 2."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.cli import app
from eval.metrics_keys import SCHEMA, TEMPLATE, missing_keys
from eval.run import evaluate
from vaegen.telemetry import REGISTRY

README = Path(__file__).resolve().parents[2] / "eval" / "README.md"
NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def full_report(
    tmp_path_factory: pytest.TempPathFactory, cvae_run: Path, judge_cache: Path, digits_judge: Any
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("report")
    metrics = evaluate(
        cvae_run,
        out,
        iwae_k=8,
        fid=True,
        cas=True,
        num_samples=200,
        cache_dir=str(judge_cache),
        kid_subsets=10,
        device="cpu",
    )
    return out, metrics


def test_metrics_json_has_every_documented_key(full_report: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = full_report
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["schema"] == SCHEMA
    assert missing_keys(on_disk) == []
    lk, fd, cas = on_disk["likelihood"], on_disk["fid"], on_disk["cas"]
    for key in ("elbo_nats", "elbo_bits_per_dim", "iwae_nll_nats", "mse_per_pixel"):
        assert isinstance(lk[key], float)
    assert lk["iwae_k"] == 8 and set(lk["per_class"]) == set(NAMES)
    assert -lk["elbo_nats"] >= lk["iwae_nll_nats"] - 0.5  # NLL estimate <= -ELBO, within noise
    assert fd["fid"] > 0 and 0 <= fd["precision"] <= 1 and set(fd["per_class_fid"]) == set(NAMES)
    assert 0 <= cas["cas_accuracy"] <= 1 and cas["real_accuracy"] > 0.9
    assert set(cas["label_fidelity_per_class"]) == set(NAMES)
    assert on_disk["judge"]["cached"] is True  # the session's judge was reused
    assert on_disk["samples"]["num_samples"] == 200 and on_disk["samples"]["labeled"]
    timings = on_disk["timings_seconds"]
    for step in ("load", "likelihood", "iwae", "samples", "judge", "fid", "cas", "figures"):
        assert timings[step] is not None and timings[step] >= 0
    exposed = {s.labels.get("metric") for m in REGISTRY.collect() for s in m.samples}
    assert {"likelihood", "iwae", "fid", "cas"} <= exposed


def test_readme_documents_every_key() -> None:
    text = README.read_text()
    for section, value in TEMPLATE.items():
        assert f"`{section}`" in text, section
        if isinstance(value, dict):
            for key in value:
                assert re.search(rf"`{re.escape(key)}`", text), f"{section}.{key}"


def test_report_html_and_figures(full_report: tuple[Path, dict[str, Any]]) -> None:
    out, _ = full_report
    html = (out / "report.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", html)
    assert len(sources) == 5  # grid, reconstructions, interpolations, scatter, curves
    for src in sources:
        assert not Path(src).is_absolute()
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FID" in html and "IWAE" in html
    assert not list(out.rglob("*.tmp"))  # every file was renamed into place


def test_nothing_requested_gives_nulls(tmp_path: Path, vae_run: Path) -> None:
    (vae_run / "train_log.jsonl").unlink(missing_ok=True)  # curves tolerate a missing log
    metrics = evaluate(vae_run, tmp_path, device="cpu")
    assert missing_keys(metrics) == []
    assert metrics["likelihood"]["iwae_nll_nats"] is None
    assert metrics["likelihood"]["elbo_nats"] is not None
    assert all(v is None for v in metrics["fid"].values())
    assert all(v is None for v in metrics["cas"].values())
    assert metrics["timings_seconds"]["fid"] is None
    assert "not available" in (tmp_path / "report.html").read_text()


def test_unconditional_model_skips_label_metrics(
    tmp_path: Path, vae_run: Path, judge_cache: Path, digits_judge: Any
) -> None:
    metrics = evaluate(
        vae_run,
        tmp_path,
        fid=True,
        cas=True,
        num_samples=100,
        cache_dir=str(judge_cache),
        kid_subsets=5,
        device="cpu",
        figures=False,
    )
    assert metrics["fid"]["fid"] is not None and metrics["fid"]["per_class_fid"] is None
    assert metrics["cas"]["cas_accuracy"] is None and metrics["cas"]["real_accuracy"] > 0.9
    assert metrics["samples"]["labeled"] is False and metrics["notes"]


def test_cli_prints_table_and_report_path(
    tmp_path: Path,
    cvae_run: Path,
    judge_cache: Path,
    digits_judge: Any,
    make_generated: Callable[..., Path],
    digits: Any,
) -> None:
    train, _ = digits
    samples = make_generated(tmp_path / "gen", train.images[:150], train.labels[:150], NAMES)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            str(cvae_run),
            "--out",
            str(out),
            "--samples",
            str(samples),
            "--fid",
            "--cache-dir",
            str(judge_cache),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and str(out / "report.html") in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples"]["source"] == str(samples)
    assert metrics["samples"]["format"] == "parquet"
    # Real digits as the "generated" set: the judge sees the same distribution.
    assert metrics["fid"]["fid"] < 5


@pytest.mark.parametrize("kind", ["foreign", "corrupt", "missing-run", "bad-option"])
def test_bad_input_exits_2(
    tmp_path: Path, cvae_run: Path, make_generated: Callable[..., Path], digits: Any, kind: str
) -> None:
    train, _ = digits
    args = [str(cvae_run), "--out", str(tmp_path / "r"), "--device", "cpu", "--fid"]
    if kind == "foreign":
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "data.csv").write_text("a,b\n1,2\n")
        args += ["--samples", str(foreign)]
    elif kind == "corrupt":
        root = make_generated(tmp_path / "gen", train.images[:50], train.labels[:50], NAMES)
        (root / "part-00000.parquet").write_bytes(b"garbage")
        args += ["--samples", str(root)]
    elif kind == "missing-run":
        args[0] = str(tmp_path / "no-such-run")
    else:
        args += ["--iwae-k", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_binarized_run_scores_binary_targets(
    tmp_path: Path, cvae_model: Any, digits: Any, make_run: Callable[..., Path]
) -> None:
    import torch

    from eval.likelihood import evaluate_likelihood
    from trainer.inputs import binarize_fixed

    train, test = digits
    run = make_run(tmp_path / "run", cvae_model, train, {"binarize": True})
    metrics = evaluate(run, tmp_path / "out", device="cpu", figures=False)
    assert metrics["data"]["binarized"] is True
    ref = evaluate_likelihood(
        cvae_model, binarize_fixed(test.images), test.labels, device=torch.device("cpu")
    )
    assert metrics["likelihood"]["elbo_nats"] == pytest.approx(float(ref.elbo.mean()))
    assert metrics["likelihood"]["mse_per_pixel"] == pytest.approx(float(ref.mse.mean()))
    assert np.isfinite(metrics["likelihood"]["bce_per_pixel"])
