"""Tests for trainer.datasets on real files: sklearn digits, the shared MNIST/Fashion-MNIST copies,
a local HTTP mirror, and image folders written with Pillow."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainer
from trainer.datasets import (
    DATASET_CHOICES,
    ImageDataset,
    dataset_fingerprint,
    load_dataset,
)
from vaegen.errors import VaegenError

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
FASHION_DIR = SHARED / "fashion-mnist"

# Per-class counts from shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST copy not present")
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="shared Fashion-MNIST absent")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test may touch ~/.cache or the network through the defaults."""
    monkeypatch.setenv("VAEGEN_CACHE", str(tmp_path_factory.mktemp("vaegen-cache")))
    monkeypatch.setenv("VAEGEN_MNIST_URL", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("VAEGEN_FASHION_MNIST_URL", f"http://127.0.0.1:{_closed_port()}/")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trainer_package_is_this_repo() -> None:
    # Another PyPI distribution also installs a top-level `trainer`.
    assert Path(trainer.__file__).resolve().is_relative_to(REPO_ROOT)


# ---- digits -----------------------------------------------------------------------------------


def test_digits_shapes_split_and_determinism() -> None:
    from sklearn.datasets import load_digits

    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.image_shape == test.image_shape == (1, 8, 8)
    assert train.num_classes == 10 and train.class_names == tuple("0123456789")
    # Stratified: every class keeps ~20% in test; the two splits partition the 1797 images.
    ref = load_digits()
    total = np.bincount(ref.target, minlength=10)
    np.testing.assert_array_equal(np.bincount(train.labels) + np.bincount(test.labels), total)
    assert np.all(np.abs(np.bincount(test.labels) - 0.2 * total) <= 1)
    # Pixel scaling round(v * 255 / 16), half up: 0 -> 0, 8 -> 128, 16 -> 255.
    expected = np.floor(ref.images * 255 / 16 + 0.5).astype(np.uint8)
    both = np.concatenate([train.images[:, 0], test.images[:, 0]])
    assert sorted(map(bytes, both)) == sorted(map(bytes, expected))
    again = load_dataset("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)


def test_digits_image_size_resizes() -> None:
    ds = load_dataset("digits", "test", image_size=16)
    assert ds.images.shape == (360, 1, 16, 16) and ds.images.dtype == np.uint8
    assert ds.images.max() > 200  # still bright strokes, not a blank resize


# ---- mnist / fashion-mnist --------------------------------------------------------------------


@needs_mnist
def test_mnist_from_shared_data() -> None:
    train = load_dataset("mnist", "train", data_dir=MNIST_DIR)
    test = load_dataset("mnist", "test", data_dir=SHARED)  # the parent folder also works
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.images.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert train.class_names == tuple("0123456789") and train.name == "mnist"


@needs_mnist
def test_fixed_binarization_reproduces_reference_binarized_mnist() -> None:
    from trainer.inputs import binarize_fixed

    x_bin = binarize_fixed(load_dataset("mnist", "test", data_dir=MNIST_DIR).images)
    assert x_bin.dtype == np.float32 and set(np.unique(x_bin)) == {0.0, 1.0}
    md5 = hashlib.md5(x_bin.reshape(10000, 784).tobytes()).hexdigest()
    assert md5 == "ac54ac6ca87fd738ecb66a4f3edfd607"


@needs_fashion
def test_fashion_mnist_class_names_and_counts() -> None:
    ds = load_dataset("fashion-mnist", "test", data_dir=SHARED)
    # Fashion-MNIST's README names, in label order.
    names = "T-shirt/top Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag".split()
    assert ds.class_names == (*names, "Ankle boot")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.labels).tolist() == [1000] * 10


@needs_fashion
def test_wrong_dataset_in_data_dir_is_named() -> None:
    with pytest.raises(VaegenError, match="holds the mnist file, not fashion-mnist"):
        load_dataset("fashion-mnist", "test", data_dir=MNIST_DIR)


def _copy_test_split(dest: Path, src: Path = MNIST_DIR) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in TEST_FILES:
        shutil.copyfile(src / name, dest / name)
    return dest


def _rewrite_gz(path: Path, edit) -> None:  # noqa: ANN001 - bytes -> bytes
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), compresslevel=1))


def _flip_pixels(content: bytes) -> bytes:
    data = bytearray(content)
    data[5000] ^= 0xFF  # inside the pixel area: the header stays valid, only the md5 catches it
    return bytes(data)


@needs_mnist
def test_plain_uncompressed_files_are_accepted(tmp_path: Path) -> None:
    folder = _copy_test_split(tmp_path / "mnist")
    for name in TEST_FILES:
        gz = folder / name
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_COUNTS


@needs_mnist
@pytest.mark.parametrize(
    "edit",
    [_flip_pixels, lambda b: b[:-100], lambda b: b"\x00\x00\x08\x04" + b[4:], lambda b: b"junk"],
    ids=["flipped-bytes", "truncated", "bad-ndim", "bad-magic"],
)
def test_corrupt_file_is_rejected(tmp_path: Path, edit) -> None:  # noqa: ANN001
    folder = _copy_test_split(tmp_path)
    _rewrite_gz(folder / TEST_FILES[0], edit)
    with pytest.raises(VaegenError, match="corrupt"):
        load_dataset("mnist", "test", data_dir=folder, cache_dir=tmp_path / "cache")


@needs_mnist
def test_not_gzip_is_corrupt(tmp_path: Path) -> None:
    folder = _copy_test_split(tmp_path)
    (folder / TEST_FILES[1]).write_bytes(b"this is not gzip")
    with pytest.raises(VaegenError, match="corrupt"):
        load_dataset("mnist", "test", data_dir=folder)


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(VaegenError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")


def test_missing_file_names_it_and_suggests_data_dir(tmp_path: Path) -> None:
    # The configured mirror (a closed local port) refuses, so the fallback download fails fast.
    with pytest.raises(VaegenError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg and "--data-dir" in msg and "\n" not in msg
    assert not any((tmp_path / "cache").rglob("*.gz*"))


# ---- download ---------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A temp folder served on 127.0.0.1 by http.server in a thread: (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@needs_mnist
def test_download_from_local_mirror(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, url = http_root
    _copy_test_split(served / "mnist")
    cache = tmp_path / "cache"
    ds = load_dataset("mnist", "test", cache_dir=cache, download_url=url)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.labels).tolist() == MNIST_TEST_COUNTS
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(TEST_FILES)
    # A second load reads the cache: the mirror is gone and the URL now points nowhere.
    shutil.rmtree(served / "mnist")
    again = load_dataset("mnist", "test", cache_dir=cache, download_url=url)
    np.testing.assert_array_equal(again.images, ds.images)


@needs_mnist
def test_download_url_from_env(
    tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = http_root
    _copy_test_split(served / "mnist")
    monkeypatch.setenv("VAEGEN_MNIST_URL", url)
    monkeypatch.setenv("VAEGEN_CACHE", str(tmp_path / "root"))
    ds = load_dataset("mnist", "test")
    assert len(ds) == 10000
    assert (tmp_path / "root" / "datasets" / "mnist" / TEST_FILES[0]).is_file()


@needs_mnist
def test_corrupt_download_is_rejected_and_not_kept(
    tmp_path: Path, http_root: tuple[Path, str]
) -> None:
    served, url = http_root
    _copy_test_split(served / "mnist")
    _rewrite_gz(served / "mnist" / TEST_FILES[0], _flip_pixels)
    cache = tmp_path / "cache"
    with pytest.raises(VaegenError, match="corrupt"):
        load_dataset("mnist", "test", cache_dir=cache, download_url=url)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_download_http_error_is_one_line(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    _, url = http_root  # serves nothing: 404
    with pytest.raises(VaegenError, match=r"HTTP 404.*--data-dir") as info:
        load_dataset("mnist", "train", cache_dir=tmp_path / "cache", download_url=url)
    assert "\n" not in str(info.value)


# ---- imagefolder ------------------------------------------------------------------------------


def _write(path: Path, color, size=(12, 12), mode="RGB", fmt="PNG") -> None:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)


def _rgb_folder(root: Path) -> Path:
    for i in range(12):
        _write(root / "red square" / f"r{i:02d}.png", (255, 0, 0))
    for i in range(3):
        _write(root / "blue circle" / f"b{i:02d}.PNG", (0, 0, 255))
    _write(root / "blue circle" / "b03.JPG", (0, 0, 255), fmt="JPEG")
    (root / "labels.csv").write_text("not an image\n")  # stray files at the root are ignored
    (root / "red square" / "notes.txt").write_text("ignored\n")
    return root


def test_imagefolder_rgb_with_spaces_and_jpeg(tmp_path: Path) -> None:
    root = _rgb_folder(tmp_path / "shapes")
    train = load_dataset(f"imagefolder:{root}", "train")
    test = load_dataset(f"imagefolder:{root}", "test")
    assert train.class_names == ("blue circle", "red square")  # sorted folder names
    assert train.image_shape == (3, 12, 12) and train.images.dtype == np.uint8
    # red: 12 files, index 9 goes to test; blue: 4 files (< 10), its last goes to test.
    assert np.bincount(train.labels).tolist() == [3, 11]
    assert np.bincount(test.labels).tolist() == [1, 1]
    blue = train.images[train.labels == 0].astype(int)
    red = train.images[train.labels == 1].astype(int)
    assert (blue[:, 2] > 200).all() and (blue[:, 0] < 50).all()  # JPEG is lossy: tolerance
    assert (red[:, 0] == 255).all() and (red[:, 2] == 0).all()
    assert train.name == f"imagefolder:{root.resolve()}"


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    root = _rgb_folder(tmp_path / "shapes")
    _write(root / "red square" / "big.png", (255, 0, 0), size=(20, 30))
    with pytest.raises(VaegenError, match="--image-size"):
        load_dataset(f"imagefolder:{root}")
    ds = load_dataset(f"imagefolder:{root}", "train", image_size=16)
    assert ds.images.shape == (15, 3, 16, 16)
    assert (ds.images[ds.labels == 1][:, 0] == 255).all()


def test_imagefolder_grayscale_gives_one_channel(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for i in range(5):
        _write(root / "dark" / f"{i}.png", 10, mode="L")
        _write(root / "light" / f"{i}.png", 240, mode="L")
    _write(root / "light" / "la.png", (240, 255), mode="LA")
    ds = load_dataset(f"imagefolder:{root}", "train")
    assert ds.image_shape == (1, 12, 12)
    assert (ds.images[ds.labels == 0] == 10).all() and (ds.images[ds.labels == 1] == 240).all()
    # One RGB file turns the whole dataset (both splits) into 3 channels.
    _write(root / "dark" / "rgb.png", (10, 10, 10))
    for split in ("train", "test"):
        assert load_dataset(f"imagefolder:{root}", split).image_shape == (3, 12, 12)


def test_imagefolder_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(VaegenError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VaegenError, match="no class folders"):
        load_dataset(f"imagefolder:{empty}")
    (empty / "cats").mkdir()
    with pytest.raises(VaegenError, match="no PNG or JPEG"):
        load_dataset(f"imagefolder:{empty}")
    _write(empty / "cats" / "ok.png", (1, 2, 3))
    (empty / "cats" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(VaegenError, match="cannot read image .*bad.png"):
        load_dataset(f"imagefolder:{empty}")
    with pytest.raises(VaegenError, match="imagefolder needs a path"):
        load_dataset("imagefolder:")


def test_imagefolder_truncated_image(tmp_path: Path) -> None:
    root = tmp_path / "trunc"
    for i in range(3):
        _write(root / "a" / f"{i}.png", (i, 0, 0), size=(64, 64))
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(root / "a" / "0.png")
    data = (root / "a" / "0.png").read_bytes()
    (root / "a" / "0.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    with pytest.raises(VaegenError, match="cannot read image"):
        load_dataset(f"imagefolder:{root}", "train")


def test_imagefolder_single_image_class_stays_in_train(tmp_path: Path) -> None:
    root = tmp_path / "one"
    _write(root / "only" / "x.png", (0, 0, 0))
    assert len(load_dataset(f"imagefolder:{root}", "train")) == 1
    with pytest.raises(VaegenError, match="no test images"):
        load_dataset(f"imagefolder:{root}", "test")


# ---- validation and fingerprints --------------------------------------------------------------


def test_unknown_spec_split_and_size() -> None:
    with pytest.raises(VaegenError) as info:
        load_dataset("cifar10")
    assert all(choice in str(info.value) for choice in DATASET_CHOICES)
    with pytest.raises(VaegenError, match="split"):
        load_dataset("digits", "validation")
    for bad in (0, -3, True, 2.5, "28"):
        with pytest.raises(VaegenError, match="--image-size"):
            load_dataset("digits", image_size=bad)  # type: ignore[arg-type]


def test_image_dataset_rejects_bad_arrays() -> None:
    ok = np.zeros((2, 1, 4, 4), np.uint8)
    labels = np.array([0, 1], np.int64)
    ds = ImageDataset("x", ok, labels, ("a", "b"))
    assert (len(ds), ds.num_classes, ds.image_shape) == (2, 2, (1, 4, 4))
    with pytest.raises(VaegenError, match="uint8"):
        ImageDataset("x", ok.astype(np.float32), labels, ("a", "b"))
    with pytest.raises(VaegenError, match="channels"):
        ImageDataset("x", np.zeros((2, 2, 4, 4), np.uint8), labels, ("a", "b"))
    with pytest.raises(VaegenError, match="int64"):
        ImageDataset("x", ok, labels.astype(np.int32), ("a", "b"))
    with pytest.raises(VaegenError, match="0..1"):
        ImageDataset("x", ok, np.array([0, 2], np.int64), ("a", "b"))


def test_fingerprints(tmp_path: Path) -> None:
    fp = dataset_fingerprint("mnist")
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == dataset_fingerprint("mnist", data_dir=MNIST_DIR)  # content, not location
    assert len({fp, dataset_fingerprint("fashion-mnist"), dataset_fingerprint("digits")}) == 3
    assert dataset_fingerprint("mnist", image_size=32) != fp
    a = _rgb_folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert dataset_fingerprint(f"imagefolder:{a}") == dataset_fingerprint(f"imagefolder:{b}")
    _write(b / "red square" / "r00.png", (254, 0, 0))
    assert dataset_fingerprint(f"imagefolder:{a}") != dataset_fingerprint(f"imagefolder:{b}")
    with pytest.raises(VaegenError, match="unknown dataset"):
        dataset_fingerprint("nope")
