"""REPORT/metrics.json and REPORT/report.html (figures referenced relatively from figures/)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from vaegen.atomic import write_bytes_atomic, write_json_atomic

METRICS_FILE = "metrics.json"
HTML_FILE = "report.html"

# (section, key, label) rows of the headline table, in order.
HEADLINE = (
    ("likelihood", "elbo_nats", "ELBO (nats)"),
    ("likelihood", "elbo_bits_per_dim", "-ELBO (bits/dim)"),
    ("likelihood", "reconstruction_nats", "reconstruction -log p(x|z) (nats)"),
    ("likelihood", "kl_nats", "KL(q(z|x) || p(z)) (nats)"),
    ("likelihood", "iwae_nll_nats", "IWAE NLL (nats)"),
    ("likelihood", "iwae_nll_bits_per_dim", "IWAE NLL (bits/dim)"),
    ("likelihood", "iwae_k", "IWAE K"),
    ("likelihood", "mse_per_pixel", "MSE per pixel"),
    ("likelihood", "bce_per_pixel", "BCE per pixel"),
    ("likelihood", "active_units", "active latent units (Cov(E[z_u|x]) > 0.01)"),
    ("fid", "fid", "FID"),
    ("fid", "kid_mean", "KID mean"),
    ("fid", "kid_std", "KID std"),
    ("fid", "precision", "precision"),
    ("fid", "recall", "recall"),
    ("fid", "feature_extractor", "feature extractor"),
    ("cas", "cas_accuracy", "CAS accuracy (train synthetic, test real)"),
    ("cas", "real_accuracy", "real accuracy (train real, test real)"),
    ("cas", "label_fidelity", "label fidelity"),
    ("memorization", "near_copy_rate", "near-copy rate (closer to train than 1% of test images)"),
    ("memorization", "flagged", "flagged as memorizing training images"),
)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)


def headline_rows(metrics: dict[str, Any], skip_null: bool = False) -> list[tuple[str, str]]:
    rows = []
    for section, key, label in HEADLINE:
        value = (metrics.get(section) or {}).get(key)
        if value is None and skip_null:
            continue
        rows.append((label, fmt(value)))
    return rows


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    path = out / METRICS_FILE
    write_json_atomic(path, metrics)
    return path


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(fmt(c) if not isinstance(c, str) else c)}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _per_class_table(metrics: dict[str, Any]) -> str:
    per_class = (metrics.get("likelihood") or {}).get("per_class") or {}
    fid_pc = (metrics.get("fid") or {}).get("per_class_fid") or {}
    cas = metrics.get("cas") or {}
    lf_pc = cas.get("label_fidelity_per_class") or {}
    cas_pc = cas.get("cas_accuracy_per_class") or {}
    copies_pc = (metrics.get("memorization") or {}).get("near_copy_rate_per_class") or {}
    names = list(per_class) or list(fid_pc) or list(lf_pc)
    if not names:
        return ""
    rows = []
    for name in names:
        lk = per_class.get(name) or {}
        rows.append(
            [
                name,
                lk.get("count"),
                lk.get("elbo_nats"),
                lk.get("iwae_nll_nats"),
                lk.get("mse_per_pixel"),
                fid_pc.get(name),
                cas_pc.get(name),
                lf_pc.get(name),
                copies_pc.get(name),
            ]
        )
    header = ["class", "test images", "ELBO", "IWAE NLL", "MSE/pixel", "FID", "CAS", "label fid."]
    header.append("near copies")
    return "<h2>Per class</h2>" + _table(header, rows)


def _generation_settings(samples: dict[str, Any]) -> str:
    """How a --samples DATASET was drawn: temperature and the judge filter, if any."""
    if samples.get("temperature") is None:
        return ""
    text = f"<p>generation settings: temperature {html.escape(fmt(samples['temperature']))}"
    judge = samples.get("judge_filter")
    if not judge:
        return text + ", no judge filter</p>"
    text += (
        f", judge filter min confidence {html.escape(fmt(judge.get('min_confidence')))}"
        f" (min acceptance {html.escape(fmt(judge.get('min_acceptance')))})</p>"
    )
    rates = judge.get("acceptance_rate") or {}
    rows = [[label, rate] for label, rate in rates.items()]
    return text + (_table(["class", "judge acceptance"], rows) if rows else "")


def _corrupted_table(metrics: dict[str, Any]) -> str:
    corrupted = (metrics.get("likelihood") or {}).get("corrupted_reconstruction")
    if not corrupted:
        return ""
    rows = [[k, corrupted.get(k)] for k in ("corruption", "mse_per_pixel", "bce_per_pixel")]
    return "<h2>Reconstruction from corrupted inputs</h2>" + _table(["", "value"], rows)


def _memorization_line(metrics: dict[str, Any]) -> str:
    """The near-copy rate against what held-out real images score, and the flag rule."""
    mem = metrics.get("memorization") or {}
    if mem.get("near_copy_rate") is None:
        return ""
    verdict = "<strong>flagged</strong>" if mem.get("flagged") else "not flagged"
    limit = mem.get("flag_rate")
    rule = "too few images to flag" if limit is None else f"flagged from {fmt(100 * limit)}%"
    return (
        f"<h2>Memorization</h2><p>{fmt(100 * mem['near_copy_rate'])}% of the "
        f"{fmt(mem.get('num_synthetic'))} generated images lie closer to a training image "
        f"than {fmt(mem.get('percentile'))}% of the {fmt(mem.get('num_test'))} held-out test "
        f"images do (judge feature distance {fmt(mem.get('threshold'))}, over "
        f"{fmt(mem.get('num_train'))} training images): {verdict} ({rule}).</p>"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0 2em; }
.muted { color: #777; }
"""


def write_html(out: Path, metrics: dict[str, Any], figures: dict[str, str | None]) -> Path:
    """A self-contained page; `figures` maps a caption to a path relative to `out` (or None)."""
    run = metrics.get("run") or {}
    data = metrics.get("data") or {}
    samples = metrics.get("samples") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>vaegen eval: {html.escape(str(run.get('run_dir')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>vaegen eval</h1><p>run <code>{html.escape(str(run.get('run_dir')))}</code>: "
        f"{html.escape(fmt(run.get('model')))} / {html.escape(fmt(run.get('arch')))}, "
        f"{html.escape(fmt(run.get('likelihood')))} likelihood, latent "
        f"{html.escape(fmt(run.get('latent_dim')))}; evaluated on "
        f"{html.escape(fmt(data.get('dataset')))} {html.escape(fmt(data.get('split')))} "
        f"({html.escape(fmt(data.get('num_images')))} images"
        f"{', binarized' if data.get('binarized') else ''}).</p>",
    ]
    if samples.get("source") == "decoder":
        parts.append(
            f"<p>generated set: {html.escape(fmt(samples.get('num_samples')))} images drawn "
            f"from the decoder (seed {html.escape(fmt(samples.get('seed')))})</p>"
        )
    elif samples.get("source"):
        parts.append(
            f"<p>generated set: <code>{html.escape(fmt(samples.get('source')))}</code> "
            f"({html.escape(fmt(samples.get('format')))}, "
            f"{html.escape(fmt(samples.get('num_samples')))} images)</p>"
        )
    parts.append(_generation_settings(samples))
    parts.append("<h2>Metrics</h2>")
    parts.append(_table(["metric", "value"], [list(r) for r in headline_rows(metrics)]))
    parts.append(_corrupted_table(metrics))
    parts.append(_per_class_table(metrics))
    parts.append(_memorization_line(metrics))
    for note in metrics.get("notes") or []:
        parts.append(f"<p class='muted'>note: {html.escape(str(note))}</p>")
    for caption, rel in figures.items():
        if rel is None:
            parts.append(f"<h2>{html.escape(caption)}</h2><p class='muted'>not available</p>")
            continue
        parts.append(
            f"<figure><h2>{html.escape(caption)}</h2>"
            f"<img src='{html.escape(rel, quote=True)}' alt='{html.escape(caption)}'></figure>"
        )
    timings = metrics.get("timings_seconds") or {}
    rows = [[k, v] for k, v in timings.items() if v is not None]
    parts.append("<h2>Timings (s)</h2>" + _table(["step", "seconds"], rows))
    parts.append(
        f"<p class='muted'>schema {html.escape(str(metrics.get('schema')))}, vaegen "
        f"{html.escape(str(metrics.get('vaegen_version')))}</p></body></html>\n"
    )
    path = out / HTML_FILE
    write_bytes_atomic(path, "\n".join(parts).encode())
    return path
