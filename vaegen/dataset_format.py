"""The DATASET contract: what `vaegen generate` writes and what every reader expects.

    DATASET/manifest.json        kind "vaegen-dataset" (workers/manifest.py documents the fields)
    DATASET/README.md            the dataset card (vaegen/dataset_card.py)
    DATASET/part-NNNNN.parquet   id int64, label int64, label_name string, image, then any extra
                                   per-row columns (numeric); image: fixed_size_binary(C*H*W),
                                   the uint8 tensor in C, H, W order (encoding raw), or
                                   struct<bytes: binary, path: string>, one PNG per row in
                                   `bytes`, `path` null (encoding png: Hugging Face's Image);
                                 schema metadata b"vaegen": JSON {"image_shape", "encoding",
                                   "dtype": "uint8", "class_names"}, and b"huggingface": the
                                   `datasets` Features of the columns (`hf_features`)
    DATASET/part-NNNNN.npz       arrays id int64 [n], label int64 [n], images uint8 [n, C, H, W]
    DATASET/part-NNNNN.tar       --format webdataset: per row KEY.cls (the label in decimal),
                                   KEY.json ({"id", "label", "label_name", extra fields...}),
                                   KEY.png; KEY is the id, zero-padded (`sample_key`)
    DATASET/CLASS/ID.png         --format imagefolder, with labels.csv (id,label,label_name,path)
                                 With --judge, every format carries JUDGE_CONFIDENCE (float32)
                                   per row: an extra field, and labels.csv's last column.

A plain VAE's rows have label -1 (UNLABELED) and label_name "". This module is torch-free: the
writers (workers/writers.py) and the one reader (vaegen/dataset_reader.py, used by eval) both
import it. A new format is one `DatasetFormat` in FORMATS, one writer in workers/writers.py and
one reader in vaegen/dataset_reader.py; new schema metadata goes in `schema_metadata`.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MANIFEST = "manifest.json"
MANIFEST_KIND = "vaegen-dataset"
MANIFEST_VERSION = 1
LABELS_CSV = "labels.csv"
LABELS_CSV_COLUMNS = ("id", "label", "label_name", "path")
PARQUET_COLUMNS = ("id", "label", "label_name", "image")
JUDGE_CONFIDENCE = "judge_confidence"  # with --judge: its probability of the row's label
SCHEMA_KEY = b"vaegen"  # the parquet schema metadata key of our JSON
HF_SCHEMA_KEY = b"huggingface"  # the key `datasets` reads Features from (Features.arrow_schema)
WDS_MEMBERS = ("cls", "json", "png")  # a webdataset sample's members, in their order in the tar
IMAGE_DTYPE = "uint8"
UNLABELED = -1  # the label of every row of a plain VAE (num_classes 0); its label_name is ""
UNLABELED_DIR = "unlabeled"
ENCODINGS = ("raw", "png")


@dataclass(frozen=True)
class DatasetFormat:
    """One value of --format: its encodings and its file names."""

    name: str
    encodings: tuple[str, ...]  # the first is the default
    suffix: str | None  # shards are part-NNNNN{suffix}; None: one file per row (imagefolder)
    other_encoding: str = ""  # why an encoding outside `encodings` is refused

    @property
    def default_encoding(self) -> str:
        return self.encodings[0]

    def shard_file(self, index: int) -> str | None:
        """The shard's file name, relative to the dataset root; None for one file per row."""
        return None if self.suffix is None else f"part-{index:05d}{self.suffix}"


FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat("parquet", ("raw", "png"), ".parquet"),
        DatasetFormat(
            "imagefolder",
            ("png",),
            None,
            "--format imagefolder writes PNG files; drop --encoding raw",
        ),
        DatasetFormat(
            "npz", ("raw",), ".npz", "--format npz stores raw arrays; --encoding png needs parquet"
        ),
        DatasetFormat(
            "webdataset",
            ("png",),
            ".tar",
            "--format webdataset writes PNG files; drop --encoding raw",
        ),
    )
}


def schema_metadata(
    image_shape: tuple[int, ...],
    encoding: str,
    class_names: Sequence[str],
    extra: Mapping[str, str] | None = None,
) -> dict[bytes, bytes]:
    """The parquet schema metadata of a shard (key order is part of the file's bytes).

    `extra`: the dtype (a numpy name) of each extra per-row column, in column order.
    """
    meta = {
        "image_shape": list(image_shape),
        "encoding": encoding,
        "dtype": IMAGE_DTYPE,
        "class_names": list(class_names),
    }
    # `datasets` reads {"info": {"features": Features.to_dict()}}, dumped as it dumps it.
    hf = {"info": {"features": hf_features(image_shape, encoding, class_names, extra=extra)}}
    return {SCHEMA_KEY: json.dumps(meta).encode(), HF_SCHEMA_KEY: json.dumps(hf).encode()}


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def _label_feature(class_names: Sequence[str]) -> dict:
    """A ClassLabel over the class names; a plain VAE's labels (-1) are plain integers."""
    return {"names": list(class_names), "_type": "ClassLabel"} if class_names else _value("int64")


def hf_features(
    image_shape: Sequence[int],
    encoding: str,
    class_names: Sequence[str],
    *,
    extra: Mapping[str, str] | None = None,
) -> dict[str, dict]:
    """A parquet shard's columns as `datasets.Features.to_dict()` gives them.

    Raw images stay fixed_size_binary (a `Value`): an Array3D is stored as nested lists, which
    made a 16k-row MNIST shard's parquet write 4.5x slower and its file 1.56x larger
    (workers/README.md); `np.frombuffer(image, np.uint8).reshape(C, H, W)` views one row.
    """
    width = int(np.prod(image_shape))
    image = {"_type": "Image"} if encoding == "png" else _value(f"fixed_size_binary[{width}]")
    return {
        "id": _value("int64"),
        "label": _label_feature(class_names),
        "label_name": _value("string"),
        "image": image,
        **{name: _value(dtype) for name, dtype in (extra or {}).items()},
    }


def wds_features(class_names: Sequence[str], extra: Mapping[str, str] | None = None) -> dict:
    """A webdataset sample as `datasets`' webdataset builder yields it, as Features.to_dict()."""
    record = {"id": _value("int64"), "label": _value("int64"), "label_name": _value("string")}
    return {
        "cls": _label_feature(class_names),
        "json": {**record, **{name: _value(dtype) for name, dtype in (extra or {}).items()}},
        "png": {"_type": "Image"},
        "__key__": _value("string"),
        "__url__": _value("string"),
    }


def sample_key(sample_id: int) -> str:
    """A webdataset sample's key: the id, zero-padded so that keys sort as ids do."""
    return f"{sample_id:09d}"


def label_name(label: int, class_names: Sequence[str]) -> str:
    return "" if label == UNLABELED else class_names[label]


def _safe_dir_name(name: str) -> str:
    return re.sub(r"[\\/\x00]", "_", name).strip()


def class_dir(label: int, name: str, class_names: Sequence[str] = ()) -> str:
    """A safe folder name for a class: its name, unless that is unusable or not unique."""
    if label < 0:
        return UNLABELED_DIR
    safe = _safe_dir_name(name)
    sanitized = [_safe_dir_name(n) for n in class_names]
    if safe in ("", ".", "..") or sanitized.count(safe) > 1 or safe.startswith("."):
        return f"class_{label}"
    return safe


def image_path(label: int, name: str, sample_id: int, class_names: Sequence[str]) -> str:
    """An imagefolder row's file, relative to the dataset root: CLASS/ID.png."""
    return f"{class_dir(label, name, class_names)}/{sample_id}.png"


def encode_png(image: np.ndarray) -> bytes:
    """One CHW uint8 image -> PNG bytes (deterministic: no text chunks or timestamps)."""
    from PIL import Image

    # Pillow picks L, RGB or RGBA from the array's shape.
    arr = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> CHW uint8; ValueError for bytes that are not an 8-bit PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"unreadable PNG ({exc})") from None
    if arr.dtype != np.uint8:
        raise ValueError("PNG is not 8-bit")
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def balanced_counts(num_samples: int, labels: Sequence[int]) -> dict[int, int]:
    """N split as evenly as possible over `labels`; the lowest get the remainder, one each."""
    base, extra = divmod(num_samples, len(labels))
    return {label: base + (1 if i < extra else 0) for i, label in enumerate(sorted(labels))}
