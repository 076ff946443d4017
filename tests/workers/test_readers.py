"""Generated datasets read by the tools users already have, compared with the manifest's rows.

`datasets` (parquet raw and png, webdataset, imagefolder, and `load_dataset(DATASET_DIR)` through
the card), the `webdataset` package, torchvision's ImageFolder, Ray Data's read_parquet and
read_webdataset, and the card's own snippets run as written. The reference is the raw parquet
set: the same spec gives the same ids, labels and pixels in every format.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np
import pytest

from vaegen.dataset_card import CARD, card_features, size_category, update_card_scores
from vaegen.dataset_format import class_dir
from vaegen.dataset_reader import Rows, open_dataset, read_rows

NAMES = ["zeta", "alpha", "b/c"]  # sorted order differs from label order; a slash in a name
SHAPE = (3, 6, 5)
CASES = {  # name -> (decoder, format, encoding)
    "parquet-raw": ("cvae", "parquet", "raw"),
    "parquet-png": ("cvae", "parquet", "png"),
    "webdataset": ("cvae", "webdataset", "png"),
    "imagefolder": ("cvae", "imagefolder", "png"),
    "npz": ("cvae", "npz", "raw"),
    "vae-webdataset": ("vae", "webdataset", "png"),
}
N, COUNTS = 45, "0=10,1=20,2=15"


@pytest.fixture(autouse=True)
def _hf_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`datasets` caches each load under tmp_path and never asks the Hub."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _generate(
    decoder: Path, out: Path, fmt: str, encoding: str, workers: int = 1, **kw: str
) -> dict:
    from workers.job import run_generation
    from workers.options import GenerateOptions
    from workers.spec import build_spec

    spec = build_spec(str(decoder), N, format=fmt, encoding=encoding, shard_size=16, seed=5, **kw)
    return run_generation(spec, out, GenerateOptions(workers=workers, show_progress=False))


@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory, make_decoder) -> dict[str, Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("decoders")
    return {
        "cvae": make_decoder(root / "cvae.onnx", num_classes=3, class_names=NAMES,
                             image_shape=SHAPE),
        "vae": make_decoder(root / "vae.onnx", conditional=False, image_shape=(1, 8, 8)),
    }  # fmt: skip


@pytest.fixture(scope="module")
def made(
    local_ray,  # noqa: ANN001 - fixture
    decoders: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sets")
    for name, (model, fmt, encoding) in CASES.items():
        counts = {"class_counts": COUNTS} if model == "cvae" else {}
        _generate(decoders[model], root / name, fmt, encoding, **counts)
    return {name: root / name for name in CASES}


@pytest.fixture(scope="module")
def ref(made: dict[str, Path]) -> Rows:
    rows = read_rows(open_dataset(made["parquet-raw"]))
    assert len(rows.ids) == N and sorted(rows.ids.tolist()) == list(range(N))
    return rows


def _chw(image) -> np.ndarray:  # noqa: ANN001 - a PIL image or an HWC/HW array
    arr = np.asarray(image)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _assert_rows_match(ids, labels, images, ref: Rows, hwc: bool = True) -> None:  # noqa: ANN001
    """Every row is the reference row of its id: label and pixels (PIL/HWC, or CHW)."""
    ids = np.asarray(ids, np.int64)
    assert sorted(ids.tolist()) == ref.ids.tolist()
    assert np.array_equal(np.asarray(labels), ref.labels[ids])
    chw = np.stack([_chw(img) if hwc else img for img in images])
    assert np.array_equal(chw, ref.images[ids])


def _shards(root: Path, suffix: str) -> list[str]:
    return sorted(glob.glob(str(root / f"part-*{suffix}")))


def test_datasets_gives_png_parquet_as_images_and_class_labels(made, ref: Rows) -> None:  # noqa: ANN001
    import datasets

    ds = datasets.load_dataset("parquet", data_files=_shards(made["parquet-png"], ".parquet"),
                               split="train")  # fmt: skip
    assert ds.features["label"].names == NAMES
    assert isinstance(ds.features["image"], datasets.Image)
    assert type(ds[0]["image"]).__module__.startswith("PIL.")
    _assert_rows_match(ds["id"], ds["label"], ds["image"], ref)
    assert ds["label_name"] == [NAMES[i] for i in ds["label"]]


def test_datasets_gives_raw_parquet_as_bytes_of_the_image_shape(made, ref: Rows) -> None:  # noqa: ANN001
    import datasets

    ds = datasets.load_dataset("parquet", data_files=_shards(made["parquet-raw"], ".parquet"),
                               split="train")  # fmt: skip
    assert ds.features["label"].names == NAMES
    assert ds.features["image"] == datasets.Value(f"fixed_size_binary[{np.prod(SHAPE)}]")
    # The card's and README's one-line numpy view.
    images = np.frombuffer(b"".join(ds["image"]), np.uint8).reshape(-1, *SHAPE)
    assert np.array_equal(images, ref.images[np.asarray(ds["id"])])
    assert np.array_equal(np.asarray(ds["label"]), ref.labels[np.asarray(ds["id"])])


@pytest.mark.parametrize("name", ["parquet-png", "webdataset", "imagefolder", "vae-webdataset"])
def test_load_dataset_on_the_folder_reads_the_shards_the_card_names(made, ref, name) -> None:  # noqa: ANN001
    import datasets

    ds = datasets.load_dataset(str(made[name]), split="train")
    manifest = open_dataset(made[name]).manifest
    assert len(ds) == manifest["num_rows"] == N
    if name == "parquet-png":
        _assert_rows_match(ds["id"], ds["label"], ds["image"], ref)
    elif name == "webdataset":
        assert ds.features["cls"].names == NAMES
        ids = [j["id"] for j in ds["json"]]
        assert ds["__key__"] == [f"{i:09d}" for i in ids]
        _assert_rows_match(ids, ds["cls"], ds["png"], ref)
    elif name == "imagefolder":
        # The card's config maps each class folder to its own label, not to sorted order.
        assert ds.features["label"].names == [class_dir(i, n, NAMES) for i, n in enumerate(NAMES)]
        paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
        ids = [int(Path(p["path"]).stem) for p in paths]
        _assert_rows_match(ids, ds["label"], ds["image"], ref)
    else:  # a plain VAE: label -1 everywhere, an int feature
        assert ds.features["cls"] == datasets.Value("int64") and set(ds["cls"]) == {-1}


def test_load_dataset_on_an_npz_folder_refuses_rather_than_reading_the_manifest(made) -> None:  # noqa: ANN001
    import datasets

    with pytest.raises(datasets.exceptions.DataFilesNotFoundError):
        datasets.load_dataset(str(made["npz"]), split="train")


def test_webdataset_package_reads_the_tars(made, ref: Rows) -> None:  # noqa: ANN001
    import webdataset as wds

    urls = _shards(made["webdataset"], ".tar")
    assert len(urls) == 3
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
                   .to_tuple("png", "cls", "json"))  # fmt: skip
    ids = [s[2]["id"] for s in samples]
    assert [s[2]["label"] for s in samples] == [s[1] for s in samples]
    assert [s[2]["label_name"] for s in samples] == [NAMES[s[1]] for s in samples]
    _assert_rows_match(ids, [s[1] for s in samples], [s[0] for s in samples], ref)
    assert read_rows(open_dataset(made["webdataset"])).ids.tolist() == sorted(ids)


def test_torchvision_imagefolder_reads_the_class_folders(made, ref: Rows) -> None:  # noqa: ANN001
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(made["imagefolder"]))
    assert ds.classes == sorted(class_dir(i, n, NAMES) for i, n in enumerate(NAMES))
    ids = [int(Path(path).stem) for path, _ in ds.samples]
    # ImageFolder numbers the folders in sorted order: map them back through the names.
    labels = [[class_dir(i, n, NAMES) for i, n in enumerate(NAMES)].index(ds.classes[t])
              for _, t in ds.samples]  # fmt: skip
    _assert_rows_match(ids, labels, [ds[i][0] for i in range(len(ds))], ref)


def test_ray_data_reads_parquet_and_webdataset(made, ref: Rows) -> None:  # noqa: ANN001
    import ray.data

    raw = ray.data.read_parquet(str(made["parquet-raw"])).take_all()
    images = [np.frombuffer(r["image"], np.uint8).reshape(SHAPE) for r in raw]
    _assert_rows_match([r["id"] for r in raw], [r["label"] for r in raw], images, ref, hwc=False)
    png = ray.data.read_parquet(str(made["parquet-png"])).take_all()
    from vaegen.dataset_format import decode_png

    images = [decode_png(r["image"]["bytes"]) for r in png]
    _assert_rows_match([r["id"] for r in png], [r["label"] for r in png], images, ref, hwc=False)
    rows = ray.data.read_webdataset(str(made["webdataset"]), file_extensions=["tar"]).take_all()
    ids, labels = [r["json"]["id"] for r in rows], [r["cls"] for r in rows]
    _assert_rows_match(ids, labels, [r["png"] for r in rows], ref)


def test_webdataset_bytes_equal_for_1_and_2_workers_and_after_resume(
    decoders: dict[str, Path],
    made,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    from workers.job import run_generation
    from workers.options import GenerateOptions
    from workers.spec import build_spec

    one = open_dataset(made["webdataset"]).manifest
    two = _generate(decoders["cvae"], tmp_path / "two", "webdataset", "png", workers=2,
                    class_counts=COUNTS)  # fmt: skip
    hashes = [s["sha256"] for s in one["shards"]]
    assert len(hashes) == 3 and hashes == [s["sha256"] for s in two["shards"]]
    (tmp_path / "two" / "part-00001.tar").write_bytes(b"truncated")
    spec = build_spec(str(decoders["cvae"]), N, format="webdataset", encoding="png",
                      shard_size=16, seed=5, class_counts=COUNTS)  # fmt: skip
    resume = GenerateOptions(resume=True, show_progress=False)
    resumed = run_generation(spec, tmp_path / "two", resume)
    assert [s["sha256"] for s in resumed["shards"]] == hashes
    assert resumed["execution"]["resumed_shards"] == 2


def test_extra_fields_reach_datasets_and_the_webdataset_json(tmp_path: Path) -> None:
    import datasets
    import webdataset as wds

    from workers.writers import write_shard

    rng = np.random.default_rng(0)
    ids, labels = np.arange(8, dtype=np.int64), rng.integers(0, 3, 8)
    images = rng.integers(0, 256, (8, *SHAPE), dtype=np.uint8)
    conf = rng.random(8).astype(np.float32)
    for fmt, enc in (("parquet", "png"), ("webdataset", "png")):
        write_shard(tmp_path / fmt, fmt=fmt, encoding=enc, index=0, ids=ids, labels=labels,
                    images=images, class_names=NAMES, extra={"judge_confidence": conf})  # fmt: skip
    ds = datasets.load_dataset("parquet", data_files=_shards(tmp_path / "parquet", ".parquet"),
                               split="train")  # fmt: skip
    assert ds.features["judge_confidence"] == datasets.Value("float32")
    assert np.array_equal(np.asarray(ds["judge_confidence"], np.float32), conf)
    urls = _shards(tmp_path / "webdataset", ".tar")
    got = [s["json"]["judge_confidence"] for s in wds.WebDataset(urls, shardshuffle=False).decode()]
    assert np.array_equal(np.asarray(got, np.float32), conf)


def _front_matter(path: Path) -> dict:
    import yaml

    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("name", list(CASES))
def test_card_front_matter_is_what_datasets_reads(made, name) -> None:  # noqa: ANN001
    from datasets import Features
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    dataset = open_dataset(made[name])
    meta = _front_matter(made[name] / CARD)
    assert meta["size_categories"] == [size_category(N)] == ["n<1K"]
    labeled = not name.startswith("vae")
    assert meta["task_categories"] == [
        "image-classification" if labeled else "unconditional-image-generation"
    ]
    assert meta["license"] == "unknown"
    card = DatasetCard.load(made[name] / CARD)
    info = DatasetInfosDict.from_dataset_card_data(card.data)["default"]
    assert info.splits["train"].num_examples == N
    expected = card_features(dataset)
    if expected is None:  # npz
        assert info.features is None and dataset.format == "npz"
        return
    assert info.features == Features.from_dict(expected)
    if dataset.format == "parquet":  # the card's features are the shards' own
        import pyarrow.parquet as pq

        schema = pq.read_schema(_shards(made[name], ".parquet")[0])
        assert Features.from_arrow_schema(schema) == info.features


def _snippets(card: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.read_text(), flags=re.S)


def _size(ds) -> int:  # noqa: ANN001 - whatever a snippet built
    if hasattr(ds, "count") and hasattr(ds, "take_all"):  # Ray Data
        return ds.count()
    return len(ds) if hasattr(ds, "__len__") else sum(1 for _ in ds)


@pytest.mark.parametrize("name", list(CASES))
def test_card_snippets_run_and_load_every_row(made, ref, name) -> None:  # noqa: ANN001
    snippets = _snippets(made[name] / CARD)
    assert len(snippets) >= 3  # datasets, torch, Ray Data
    for code in snippets:
        scope: dict = {"DATASET_DIR": str(made[name])}
        exec(compile(code, f"{name}/{CARD}", "exec"), scope)  # noqa: S102 - our own card
        if "ds" in scope:
            assert _size(scope["ds"]) == N, code
        if "images" in scope:
            assert np.array_equal(scope["images"], ref.images[: len(scope["images"])]), code


def test_update_card_scores_writes_eval_scores(made, tmp_path: Path) -> None:  # noqa: ANN001
    import shutil

    from eval.metrics_keys import empty_metrics

    root = tmp_path / "parquet-png"  # the card names the folder
    shutil.copytree(made["parquet-png"], root)
    before = _front_matter(root / CARD)
    assert "Not scored yet" in (root / CARD).read_text()
    metrics = empty_metrics()
    metrics["run"]["train_dataset"] = "fashion-mnist"
    metrics["fid"].update(fid=12.3456, feature_extractor="judge")
    metrics["cas"].update(cas_accuracy=0.875, real_accuracy=0.9, label_fidelity=0.8125)
    metrics["judge"]["test_accuracy"] = 0.991
    update_card_scores(root, metrics)
    text = (root / CARD).read_text()
    assert _front_matter(root / CARD) == before
    for line in ("| FID | 12.35 |", "0.875 |", "| 0.9 |", "0.8125 |", "0.991 |",
                 "| decoder trained on | fashion-mnist |", "on judge features"):  # fmt: skip
        assert line in text, line
    assert "KID (mean)" not in text and "Not scored yet" not in text  # null scores are left out
