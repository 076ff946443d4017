"""REPORT/figures/*.png: sample grid per class, reconstructions, interpolations, latent scatter,
training curves. matplotlib with the Agg backend; each PNG is written to a temporary name, then
renamed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.loading import LoadedRun
from eval.memorization import ClosestPairs
from vaegen.atomic import atomic_path

FIGURES_DIR = "figures"
CURVE_KEYS = (
    ("elbo", ("train_elbo", "test_elbo")),
    ("reconstruction", ("train_reconstruction", "test_reconstruction")),
    ("kl", ("train_kl", "test_kl")),
    ("throughput", ("samples_per_s",)),
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def montage(grid: np.ndarray, pad: int = 1) -> np.ndarray:
    """[rows, cols, C, H, W] floats in [0, 1] -> one [rows*(H+pad), cols*(W+pad), C] image."""
    rows, cols, c, h, w = grid.shape
    out = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    for r in range(rows):
        for k in range(cols):
            y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
            out[y0 : y0 + h, x0 : x0 + w] = grid[r, k].transpose(1, 2, 0)
    return out


def _imshow(ax: Any, image: np.ndarray) -> None:
    if image.shape[2] == 1:
        ax.imshow(image[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _to_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    path: Path,
    per_class: int = 10,
) -> Path:
    """One row per class (first `per_class` samples of each); one block when unlabeled."""
    images = _to_float(images)
    blank = np.ones_like(images[0])
    rows, names = [], []
    if (labels >= 0).all():
        for c, name in enumerate(class_names):
            chosen = images[labels == c][:per_class]
            if len(chosen) == 0:
                continue
            pad = [blank] * (per_class - len(chosen))
            rows.append(np.stack(list(chosen) + pad))
            names.append(str(name))
    else:
        n = min(len(images), per_class * per_class)
        cols = min(per_class, n)
        chosen = list(images[:n]) + [blank] * (-n % cols)
        rows = [np.stack(chosen[i : i + cols]) for i in range(0, len(chosen), cols)]
        names = [""] * len(rows)
    grid = montage(np.stack(rows))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(12, 1 + 0.8 * len(rows[0])), 0.8 * len(rows) + 0.6))
    _imshow(ax, grid)
    h = images.shape[2] + 1
    ax.set_yticks([1 + h * (i + 0.5) for i in range(len(names))], names)
    ax.set_title("samples per class" if any(names) else "samples")
    return _save(fig, path)


def image_rows(
    rows: list[np.ndarray],
    row_names: list[str],
    title: str,
    path: Path,
    column_names: list[str] | None = None,
) -> Path:
    """Rows of equally many images (float [n, C, H, W] or uint8) with a label per row (and,
    when given, per column)."""
    grid = montage(np.stack([_to_float(r) for r in rows]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(14, 1 + 0.8 * len(rows[0])), 0.9 * len(rows) + 0.6))
    _imshow(ax, grid)
    h, w = rows[0].shape[2] + 1, rows[0].shape[3] + 1
    ax.set_yticks([1 + h * (i + 0.5) for i in range(len(rows))], row_names)
    if column_names is not None:
        ax.set_xticks([1 + w * (i + 0.5) for i in range(len(column_names))], column_names)
        ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def reconstructions(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device
) -> np.ndarray:
    """Decoder means at z = mu for inputs x (float [n, C, H, W])."""
    xt = torch.from_numpy(x).to(device)
    yt = torch.from_numpy(y).to(device) if model.cfg.conditional else None
    mu, _ = model.encode(xt, yt)
    return model.decode(mu, yt).cpu().numpy()


@torch.no_grad()
def interpolations(
    model: torch.nn.Module,
    x_from: np.ndarray,
    x_to: np.ndarray,
    y_from: np.ndarray,
    y_to: np.ndarray,
    device: torch.device,
    steps: int = 10,
) -> list[np.ndarray]:
    """Per pair, decoder means along the straight line between the two encoder means.

    For a CVAE each endpoint is encoded with its own label and the path keeps the first one's,
    so the row shows style changing within one class.
    """
    cond = model.cfg.conditional
    a = torch.from_numpy(x_from).to(device)
    b = torch.from_numpy(x_to).to(device)
    ya = torch.from_numpy(y_from).to(device) if cond else None
    yb = torch.from_numpy(y_to).to(device) if cond else None
    mu_a, _ = model.encode(a, ya)
    mu_b, _ = model.encode(b, yb)
    t = torch.linspace(0, 1, steps, device=device).view(steps, 1, 1)
    z = (1 - t) * mu_a.unsqueeze(0) + t * mu_b.unsqueeze(0)  # [steps, n, D]
    n = len(x_from)
    y_path = ya.repeat(steps) if cond else None
    imgs = model.decode(z.reshape(steps * n, -1), y_path).reshape(steps, n, *a.shape[1:])
    return [imgs[:, i].cpu().numpy() for i in range(n)]


def pca_2d(mu: np.ndarray) -> np.ndarray:
    """Project onto the two leading principal components (zero-padded below 2 dims)."""
    centred = mu.astype(np.float64) - mu.mean(0, keepdims=True)
    if centred.shape[1] < 2:
        return np.concatenate([centred, np.zeros((len(centred), 1))], axis=1)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def latent_scatter(mu: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path) -> Path:
    points = pca_2d(mu)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        mask = labels == c
        if mask.any():
            ax.scatter(*points[mask].T, s=4, alpha=0.6, color=cmap(c % cmap.N), label=str(name))
    ax.set_xlabel("PC 1 of mu")
    ax.set_ylabel("PC 2 of mu")
    ax.set_title("latent means (PCA), test split")
    ax.legend(markerscale=3, fontsize=7, loc="best", ncol=1 + len(class_names) // 12)
    return _save(fig, path)


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """RUN/train_log.jsonl as a list of dicts; a missing file or bad lines are skipped."""
    if not path.is_file():
        return []
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def training_curves(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """One panel per quantity found in the log; None when nothing plottable is there."""

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, row in enumerate(rows):
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                epoch = row.get("epoch", i + 1)
                xs.append(float(epoch) if isinstance(epoch, int | float) else float(i + 1))
                ys.append(float(value))
        return xs, ys

    panels = [(title, keys) for title, keys in CURVE_KEYS if any(series(k)[0] for k in keys)]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=True):
        for key in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _reconstructions_png(run: LoadedRun, rng: np.random.Generator, device: Any, path: Path) -> Path:
    targets, labels = run.real.targets, run.real.test.labels
    pick = rng.choice(len(targets), size=min(10, len(targets)), replace=False)
    recon = reconstructions(run.model, targets[pick], labels[pick], device)
    rows = [targets[pick], recon]
    return image_rows(rows, ["input", "reconstruction"], "reconstructions (z = mu)", path)


def _interpolations_png(
    run: LoadedRun, rng: np.random.Generator, device: Any, path: Path
) -> Path | None:
    targets, labels = run.real.targets, run.real.test.labels
    pairs = min(5, len(targets) // 2)
    if not pairs:
        return None
    order = rng.choice(len(targets), size=2 * pairs, replace=False)
    a, b = order[:pairs], order[pairs:]
    rows = interpolations(run.model, targets[a], targets[b], labels[a], labels[b], device)
    names = [f"{run.real.class_names[labels[i]]}" for i in a]
    return image_rows(rows, names, "latent interpolations", path)


def draw_report_figures(
    out: Path,
    run: LoadedRun,
    mu: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray],
    device: Any,
    seed: int,
    pairs: ClosestPairs | None = None,
) -> dict[str, str | None]:
    """Every figure of the report: `grid` is (images, labels) of generated samples, `mu` the
    test split's encoder means, `pairs` the memorization check's closest pairs. Returns
    caption -> path relative to `out` (None: not drawn)."""
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = run.real.class_names
    labels = run.real.test.labels
    rng = np.random.default_rng(seed)  # one stream: reconstructions, then interpolations
    drawn: dict[str, Path | None] = {
        "Samples per class": sample_grid(*grid, names, fig_dir / "samples.png"),
    }
    drawn["Reconstructions beside inputs"] = _reconstructions_png(
        run, rng, device, fig_dir / "reconstructions.png"
    )
    interpolated = _interpolations_png(run, rng, device, fig_dir / "interpolations.png")
    if interpolated is not None:
        drawn["Latent interpolations"] = interpolated
    drawn["Latent means, PCA, by class"] = latent_scatter(
        mu, labels, names, fig_dir / "latent_scatter.png"
    )
    curves = training_curves(read_train_log(run.train_log), fig_dir / "training_curves.png")
    drawn["Training curves"] = curves
    if pairs is not None and len(pairs.distance):
        drawn["Closest pairs: generated image above its nearest training image"] = image_rows(
            [pairs.synthetic, pairs.train],
            ["generated", "nearest train"],
            "closest to the training set (judge feature distance below each pair)",
            fig_dir / "closest_pairs.png",
            column_names=[f"{d:.3g}" for d in pairs.distance],
        )
    return {k: None if p is None else f"{FIGURES_DIR}/{p.name}" for k, p in drawn.items()}
