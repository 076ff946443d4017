"""Image datasets for training and evaluation: digits, MNIST, Fashion-MNIST and image folders.

Every loader returns an `ImageDataset` of uint8 images [N, C, H, W] and int64 labels [N], with a
fixed, deterministic train/test split. Bad input raises `VaegenError` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.download import DownloadError, base_urls, dataset_cache_dir, download_idx
from trainer.idx import IDX_MD5, SPLIT_FILES, candidate_dirs, find_file, load_idx_pair
from vaegen.errors import VaegenError

DATASET_CHOICES = ("digits", "mnist", "fashion-mnist", "imagefolder:PATH")
SPLITS = ("train", "test")
# Bump when a split rule or a pixel conversion changes, so fingerprints (cache keys) change too.
_FINGERPRINT_VERSION = 1
_MAX_IMAGE_SIZE = 4096

_DIGIT_NAMES = tuple(str(i) for i in range(10))
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": _DIGIT_NAMES,
    "mnist": _DIGIT_NAMES,
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg"})
_GRAY_MODES = frozenset({"L", "1", "LA"})


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class ImageDataset:
    name: str
    images: np.ndarray  # uint8 [N, C, H, W], C in {1, 3}
    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        # Other stages build datasets too (e.g. from generated samples): reject bad shapes early.
        x, y = self.images, self.labels
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise VaegenError(f"dataset {self.name}: images must be a uint8 array [N, C, H, W]")
        if x.shape[1] not in (1, 3):
            raise VaegenError(f"dataset {self.name}: images need 1 or 3 channels, not {x.shape[1]}")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(x),):
            raise VaegenError(f"dataset {self.name}: labels must be an int64 array [{len(x)}]")
        if not self.class_names:
            raise VaegenError(f"dataset {self.name}: no class names")
        if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
            raise VaegenError(
                f"dataset {self.name}: labels must lie in 0..{len(self.class_names) - 1}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download_url: str | None = None,
) -> ImageDataset:
    """Load one split of a dataset named by `spec` (see DATASET_CHOICES).

    mnist/fashion-mnist are read from `data_dir` (the folder with the IDX files, or its parent),
    else from `cache_dir/<name>` (default $VAEGEN_CACHE/datasets, or ~/.cache/vaegen/datasets),
    downloading there from `download_url` when absent. `image_size` resizes to a square.
    """
    if split not in SPLITS:
        raise VaegenError(f"unknown split {split!r}; choose train or test")
    size = _check_image_size(image_size)
    kind, folder = _parse_spec(spec)
    if folder is not None:  # only imagefolder specs carry a path
        return _load_imagefolder(folder, split, size)
    if kind == "digits":
        ds = _load_digits(split)
    else:
        ds = _load_idx(kind, split, data_dir, cache_dir, download_url)
    if size is not None and ds.images.shape[2:] != (size, size):
        ds = ImageDataset(ds.name, _resize(ds.images, size), ds.labels, ds.class_names)
    return ds


def dataset_fingerprint(
    spec: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """A sha256 hex digest of the dataset's content (both splits), stable across machines.

    mnist/fashion-mnist: the official md5s, which every load verifies, so no file is read.
    digits: the converted arrays. imagefolder: relative paths and file bytes (not the folder's
    location, so a copy has the same fingerprint).
    """
    del data_dir, cache_dir  # where the files live does not change what they hold
    size = _check_image_size(image_size)
    kind, folder = _parse_spec(spec)
    h = hashlib.sha256()
    header: dict[str, Any] = {"v": _FINGERPRINT_VERSION, "kind": kind, "image_size": size}
    h.update(json.dumps(header, sort_keys=True).encode())
    if kind in IDX_MD5:
        h.update(json.dumps(IDX_MD5[kind], sort_keys=True).encode())
    elif kind == "digits":
        images, labels = _digits_arrays()
        h.update(images.tobytes())
        h.update(labels.tobytes())
    elif folder is not None:
        classes, files = _scan_imagefolder(folder)
        for cls, paths in zip(classes, files, strict=True):
            for path in paths:
                rel = path.relative_to(folder).as_posix()
                digest = hashlib.sha256(_read_bytes(path)).hexdigest()
                h.update(f"{cls}\0{rel}\0{digest}\n".encode())
    return h.hexdigest()


# ---- parsing and validation -------------------------------------------------------------------


def _parse_spec(spec: str) -> tuple[str, Path | None]:
    if not isinstance(spec, str):
        raise VaegenError(f"dataset must be a string, not {type(spec).__name__}")
    if spec.startswith("imagefolder:"):
        path = spec[len("imagefolder:") :]
        if not path.strip():
            raise VaegenError("imagefolder needs a path: --dataset imagefolder:PATH")
        return "imagefolder", Path(path).expanduser().resolve()
    if spec in ("digits", "mnist", "fashion-mnist"):
        return spec, None
    raise VaegenError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASET_CHOICES)}")


def _check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    # bool is an int subclass; True would silently mean 1x1.
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise VaegenError(f"--image-size must be an integer, not {image_size!r}")
    if not 1 <= int(image_size) <= _MAX_IMAGE_SIZE:
        raise VaegenError(f"--image-size must lie in 1..{_MAX_IMAGE_SIZE}, not {image_size}")
    return int(image_size)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of uint8 [N, C, H, W] to [N, C, size, size] with Pillow."""
    from PIL import Image

    n, c = images.shape[:2]
    out = np.empty((n, c, size, size), dtype=np.uint8)
    hwc = images.transpose(0, 2, 3, 1)
    for i in range(n):
        im = Image.fromarray(hwc[i, :, :, 0] if c == 1 else hwc[i])
        arr = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


# ---- digits -----------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: sklearn takes a while to import

    bunch = load_digits()
    # 0..16 -> 0..255, rounding half up (np.rint would round 127.5 to even).
    scaled = np.floor(np.clip(bunch.images, 0, 16) * (255.0 / 16.0) + 0.5)
    return scaled.astype(np.uint8)[:, None, :, :], bunch.target.astype(np.int64)


def _load_digits(split: str) -> ImageDataset:
    from sklearn.model_selection import train_test_split

    images, labels = _digits_arrays()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    # Sorted, so the split keeps the source order and does not depend on the shuffle's order.
    idx = np.sort(train_idx if split == "train" else test_idx)
    return ImageDataset("digits", images[idx], labels[idx], CLASS_NAMES["digits"])


# ---- mnist / fashion-mnist --------------------------------------------------------------------


def _load_idx(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    download_url: str | None,
) -> ImageDataset:
    dirs: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            # A typo should fail, not silently fall back to a download.
            raise VaegenError(f"--data-dir {root} does not exist or is not a folder")
        dirs = candidate_dirs(name, root)
    cache = dataset_cache_dir(name, cache_dir)
    paths: list[Path] = []
    for stem in SPLIT_FILES[split]:
        path = find_file(stem, [*dirs, cache])
        if path is None:
            path = _download(name, stem, cache, download_url, data_dir)
        paths.append(path)
    images, labels = load_idx_pair(name, paths[0], paths[1])
    return ImageDataset(name, images, labels, CLASS_NAMES[name])


def _download(
    name: str,
    stem: str,
    cache: Path,
    download_url: str | None,
    data_dir: str | os.PathLike[str] | None,
) -> Path:
    try:
        return download_idx(name, stem, cache, base_urls(name, download_url))
    except DownloadError as exc:
        where = f"in {data_dir} nor in {cache}" if data_dir is not None else f"in {cache}"
        raise VaegenError(
            f"{name} file {stem}(.gz) is not {where}, and the download failed ({exc}); "
            f"pass --data-dir DIR pointing at a folder with the {name} IDX files"
        ) from None


# ---- imagefolder ------------------------------------------------------------------------------


def _scan_imagefolder(root: Path) -> tuple[list[str], list[list[Path]]]:
    """Sorted class folder names and, per class, its image files sorted by relative path."""
    if not root.is_dir():
        raise VaegenError(f"imagefolder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise VaegenError(f"imagefolder {root} has no class folders (expected ROOT/CLASS/IMAGE)")
    files: list[list[Path]] = []
    for cls in classes:
        base = root / cls
        found = [
            p
            for p in base.rglob("*")
            if p.suffix.lower() in _IMAGE_EXTS
            and not any(part.startswith(".") for part in p.relative_to(base).parts)
            and p.is_file()
        ]
        if not found:
            raise VaegenError(f"class folder {base} holds no PNG or JPEG images")
        files.append(sorted(found, key=lambda p, b=base: p.relative_to(b).as_posix()))
    return classes, files


def _is_test(n: int) -> list[bool]:
    """Per-class split: every 10th file goes to test; a class of 2..9 files gives its last one;
    a single-file class stays in train."""
    test = [i % 10 == 9 for i in range(n)]
    if 2 <= n < 10:
        test[-1] = True
    return test


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VaegenError(f"cannot read {path}: {exc.strerror or exc}") from None


def _image_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # Pillow reports bad files as any of these, depending on the plugin and the damage.
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _probe(path: Path) -> tuple[bool, tuple[int, int]]:
    """(is grayscale, displayed (width, height)) from the header only, without decoding."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            # EXIF orientations 5..8 rotate by 90 degrees, which swaps the displayed size.
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return im.mode in _GRAY_MODES, (w, h)
    except _image_errors() as exc:
        raise VaegenError(f"cannot read image {path}: {exc}") from None


def _decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here with its name
            im = ImageOps.exif_transpose(im).convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except _image_errors() as exc:
        raise VaegenError(f"cannot read image {path}: {exc}") from None


def _load_imagefolder(root: Path, split: str, size: int | None) -> ImageDataset:
    classes, files = _scan_imagefolder(root)
    # Channels and size are decided over BOTH splits, so train and test always agree.
    probes = {p: _probe(p) for paths in files for p in paths}
    gray = all(is_gray for is_gray, _ in probes.values())
    if size is None:
        by_size: dict[tuple[int, int], Path] = {}
        for path, (_, wh) in probes.items():
            by_size.setdefault(wh, path)
        if len(by_size) > 1:
            (wa, ha), pa = next(iter(by_size.items()))
            (wb, hb), pb = list(by_size.items())[1]
            raise VaegenError(
                f"imagefolder {root} mixes image sizes ({pa.relative_to(root)} is {wa}x{ha}, "
                f"{pb.relative_to(root)} is {wb}x{hb}); pass --image-size N to resize"
            )
    mode = "L" if gray else "RGB"
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for label, paths in enumerate(files):
        for path, is_test in zip(paths, _is_test(len(paths)), strict=True):
            if is_test == (split == "test"):
                arrays.append(_decode(path, mode, size))
                labels.append(label)
    if not arrays:
        raise VaegenError(
            f"imagefolder {root} has no {split} images (a class needs 2 images to give one to test)"
        )
    images = np.stack(arrays)
    images = images[:, None, :, :] if gray else images.transpose(0, 3, 1, 2)
    return ImageDataset(
        f"imagefolder:{root}",
        np.ascontiguousarray(images),
        np.asarray(labels, dtype=np.int64),
        tuple(classes),
    )
