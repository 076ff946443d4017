"""The dataset card's "Load" section: how to read each format with `datasets`, torch and Ray Data.

Each snippet is a fenced python block that runs as written once `DATASET_DIR` names the dataset
folder (tests/vaegen/test_dataset_card.py runs them on real datasets), so a format change that
breaks a snippet fails a test rather than a user.
"""

from __future__ import annotations

from vaegen.dataset_reader import Dataset

# PIL's mode for C channels, as webdataset's decoder names it (torch tensors, uint8).
_WDS_DECODE = {1: "torchl8", 3: "torchrgb8", 4: "torchrgba8"}

_VAEGEN_TORCH = """import torch
from vaegen.dataset_reader import open_dataset, read_rows

rows = read_rows(open_dataset(DATASET_DIR))  # every shard checked against its sha256
ds = torch.utils.data.TensorDataset(torch.from_numpy(rows.images), torch.from_numpy(rows.labels))
"""


def _block(code: str) -> str:
    return f"```python\n{code.strip()}\n```\n"


def _hf(dataset: Dataset) -> str:
    c, h, w = dataset.image_shape
    load = 'from datasets import load_dataset\n\nds = load_dataset(DATASET_DIR, split="train")'
    if dataset.format == "npz":
        return (
            "`datasets` has no npz loader: read it with numpy or the torch snippet below.\n\n"
            + _block('import numpy as np\n\nshard = np.load(DATASET_DIR + "/part-00000.npz")\n'
                     'images, labels = shard["images"], shard["label"]  # [n, C, H, W], [n]')
        )  # fmt: skip
    if dataset.format == "parquet" and dataset.encoding == "raw":
        return _block(
            f"import numpy as np\n{load}  # label: ClassLabel; image: raw bytes\n"
            f'images = np.frombuffer(b"".join(ds["image"]), np.uint8).reshape(-1, {c}, {h}, {w})'
        )
    what = {
        "parquet": "image: PIL images; label: ClassLabel",
        "webdataset": "png: PIL images; cls: ClassLabel; json: id, label, label_name",
        "imagefolder": "image: PIL images; label: ClassLabel over the class folders",
    }[dataset.format]
    key = "cls" if dataset.format == "webdataset" else "label"
    names = f'names = ds.features["{key}"].names  # the class names' if dataset.class_names else ""
    return _block(f"{load}  # {what}\n{names}")


def _torch(dataset: Dataset) -> str:
    if dataset.format == "imagefolder":
        return (
            _block(
                "from torchvision.datasets import ImageFolder\n\n"
                "ds = ImageFolder(DATASET_DIR)  # targets index ds.classes: the folders, sorted"
            )
            + "\nlabels.csv maps each file to its vaegen label and id.\n"
        )
    text = "A 3-line `Dataset` (needs `pip install vaegen`):\n\n" + _block(_VAEGEN_TORCH)
    if dataset.format == "webdataset":
        decode = _WDS_DECODE.get(dataset.image_shape[0], "torchrgb8")
        text += "\nOr streamed with `webdataset`:\n\n" + _block(
            "import glob\nimport webdataset as wds\n\n"
            'urls = sorted(glob.glob(DATASET_DIR + "/part-*.tar"))\n'
            f'ds = wds.WebDataset(urls, shardshuffle=False).decode("{decode}")'
            '.to_tuple("png", "cls")'
        )
    return text


def _ray(dataset: Dataset) -> str:
    c, h, w = dataset.image_shape
    code = {
        "parquet": "ds = ray.data.read_parquet(DATASET_DIR)  # id, label, label_name, image",
        "webdataset": 'ds = ray.data.read_webdataset(DATASET_DIR, file_extensions=["tar"])\n'
        "# png: HWC uint8 arrays, cls: int, json: dict",
        "imagefolder": "ds = ray.data.read_images(DATASET_DIR, include_paths=True)\n"
        "# the class is the folder in each row's path",
        "npz": "import glob\n\nimport numpy as np\n\n"
        'shards = [np.load(p) for p in sorted(glob.glob(DATASET_DIR + "/part-*.npz"))]\n'
        'ds = ray.data.from_items([{"image": im, "label": int(y)} for s in shards\n'
        '                          for im, y in zip(s["images"], s["label"])])',
    }[dataset.format]
    note = ""
    if dataset.format == "parquet":
        note = (
            f'\n`image` is raw bytes: `np.frombuffer(row["image"], np.uint8).reshape({c}, {h}, '
            f"{w})`.\n"
            if dataset.encoding == "raw"
            else '\n`image` is `{"bytes": PNG, "path": None}`, Hugging Face\'s Image storage.\n'
        )
    return _block(f"import ray\n\n{code}") + note


def loading_section(dataset: Dataset) -> str:
    """The card's "Load" section for `dataset`'s format and encoding."""
    return "\n".join(
        [
            "## Load\n",
            "`DATASET_DIR` is this folder, as a string.\n",
            "### Hugging Face `datasets`\n",
            _hf(dataset),
            "### PyTorch\n",
            _torch(dataset),
            "### Ray Data\n",
            _ray(dataset),
        ]
    )
