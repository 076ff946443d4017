"""IDX files (MNIST, Fashion-MNIST): the official checksums, lookup, verification and parsing."""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from pathlib import Path

import numpy as np

from vaegen.errors import VaegenError

# md5 of the DECOMPRESSED official files. Some .gz copies were re-compressed, so the .gz bytes
# are not comparable; the decompressed bytes are (see shared/data/README.md).
IDX_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX type byte -> numpy dtype (big-endian, as the format stores it).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Verified (path, size, mtime_ns, md5) keys: hashing 47 MB again on every load is wasted time.
_verified: set[tuple[str, int, int, str]] = set()
_verified_lock = threading.Lock()


def candidate_dirs(name: str, data_dir: Path) -> list[Path]:
    """Folders where `name`'s files may live: the folder itself, a per-dataset child, or the
    torchvision layout (MNIST/raw, FashionMNIST/raw)."""
    tv = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    return [data_dir, data_dir / name, data_dir / name / "raw", data_dir / tv / "raw"]


def find_file(stem: str, dirs: list[Path]) -> Path | None:
    """The first `stem` or `stem.gz` (plain wins) in `dirs`, or None."""
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def decompress(raw: bytes, source: str) -> bytes:
    try:
        return zlib.decompress(raw, wbits=31)  # gzip container; faster than gzip.decompress
    except zlib.error:
        # Multi-member archives (rare) need the gzip module.
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise VaegenError(f"{source} is corrupt: not a valid gzip file ({exc})") from None


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file, plain or gzipped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VaegenError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decompress(raw, str(path)) if path.name.endswith(".gz") else raw


def check_md5(name: str, stem: str, content: bytes, source: str) -> None:
    """Raise VaegenError 'corrupt' unless `content` is the official file `name/stem`."""
    expected = IDX_MD5[name][stem]
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual == expected:
        return
    for other, table in IDX_MD5.items():
        if other != name and table.get(stem) == actual:
            raise VaegenError(f"{source} holds the {other} file, not {name}: check --data-dir")
    raise VaegenError(f"{source} is corrupt: md5 {actual} != official {expected} for {name}/{stem}")


def load_verified(name: str, stem: str, path: Path) -> bytes:
    """Decompressed bytes of `path`, checked against the official md5 (once per file version)."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, IDX_MD5[name][stem])
    except OSError as exc:
        raise VaegenError(f"cannot read {path}: {exc.strerror or exc}") from None
    content = read_idx_bytes(path)
    with _verified_lock:
        known = key in _verified
    if not known:
        check_md5(name, stem, content, str(path))
        with _verified_lock:
            _verified.add(key)
    return content


def parse_idx(content: bytes, source: str) -> np.ndarray:
    """Parse IDX bytes into a native-endian array; any header or length problem is 'corrupt'."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise VaegenError(f"{source} is corrupt: bad IDX magic number")
    dtype_code, ndim = content[2], content[3]
    if dtype_code not in _IDX_DTYPES or ndim == 0:
        raise VaegenError(f"{source} is corrupt: bad IDX header (type {dtype_code}, ndim {ndim})")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise VaegenError(f"{source} is corrupt: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(content, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(content) != expected:
        raise VaegenError(
            f"{source} is corrupt: {len(content)} bytes, the IDX header {dims} implies {expected}"
        )
    arr = np.frombuffer(content, dtype, offset=header).reshape(dims)
    # Copy: frombuffer over bytes is read-only, and torch.from_numpy warns on read-only arrays.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_idx_pair(name: str, images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Verified images [N, 1, H, W] uint8 and labels [N] int64 from one split's two files."""
    img_stem = _stem(images_path)
    lbl_stem = _stem(labels_path)
    images = parse_idx(load_verified(name, img_stem, images_path), str(images_path))
    labels = parse_idx(load_verified(name, lbl_stem, labels_path), str(labels_path))
    # The md5 already pins the content; these checks guard the parser's assumptions.
    if images.ndim != 3 or images.dtype != np.uint8:
        raise VaegenError(f"{images_path} is corrupt: expected uint8 images of rank 3")
    if labels.ndim != 1 or len(labels) != len(images):
        raise VaegenError(
            f"{labels_path} is corrupt: {len(labels)} labels for {len(images)} images"
        )
    return images[:, None, :, :], labels.astype(np.int64)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".gz")] if name.endswith(".gz") else name
