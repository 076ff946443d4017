"""DATASET/README.md: the dataset card, with Hugging Face's YAML front matter.

`vaegen generate` writes it when a job completes (`write_card`), for every format; `vaegen eval
--samples DATASET` rewrites it with its scores (`update_card_scores`). The front matter gives
`datasets.load_dataset(DATASET_DIR)` the shards to read (`configs`) and their features
(`dataset_info`); the body states the spec, the model, the classes, how to load the set with
`datasets`, torchvision and Ray Data, and the scores. Torch-free, written atomically; the YAML is
written by hand (the workers do not depend on PyYAML or `datasets`), and the tests parse it back
with both.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaegen.atomic import write_bytes_atomic
from vaegen.dataset_format import (
    FORMATS,
    HF_SCHEMA_KEY,
    class_dir,
    hf_features,
    wds_features,
)
from vaegen.dataset_loading import loading_section
from vaegen.dataset_reader import Dataset, open_dataset

CARD = "README.md"
# Hugging Face's size_categories, by upper bound on the row count.
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
          (1_000_000_000, "100M<n<1B"))  # fmt: skip
# "section.key" of eval's metrics.json shown under "Scores", and what the card calls it.
SCORE_KEYS = {
    "fid.fid": "FID",
    "fid.kid_mean": "KID (mean)",
    "fid.precision": "precision",
    "fid.recall": "recall",
    "cas.cas_accuracy": "CAS: real test accuracy of a classifier trained on this set",
    "cas.real_accuracy": "the same classifier trained on the real training split",
    "cas.label_fidelity": "label fidelity: the judge agrees with the row's label",
    "judge.test_accuracy": "the judge's accuracy on the real test split",
    "memorization.near_copy_rate": "near copies: closer to train than 1% of test images",
    "memorization.flagged": "flagged as copying training images",
}


def write_card(
    dataset_dir: str | os.PathLike[str], scores: Mapping[str, Any] | None = None
) -> Path:
    """Write DATASET/README.md for a complete dataset; `scores` is eval's metrics.json dict."""
    dataset = open_dataset(dataset_dir)
    path = dataset.root / CARD
    text = "---\n" + _front_matter(dataset) + "---\n\n" + _body(dataset, scores)
    write_bytes_atomic(path, text.encode())
    return path


def update_card_scores(dataset_dir: str | os.PathLike[str], scores: Mapping[str, Any]) -> Path:
    """Rewrite DATASET/README.md with eval's scores: `scores` is REPORT/metrics.json as a dict
    (schema vaegen-eval/1); SCORE_KEYS lists the keys shown, null ones are left out."""
    return write_card(dataset_dir, scores)


def card_features(dataset: Dataset) -> dict[str, Any] | None:
    """What `datasets` loads, as Features.to_dict(); None for npz (no `datasets` builder)."""
    names, fmt = dataset.class_names, dataset.format
    if fmt == "parquet":
        return _shard_features(dataset) or hf_features(dataset.image_shape, dataset.encoding, names)
    if fmt == "webdataset":
        return wds_features(names, _wds_extra(dataset))
    if fmt == "imagefolder":
        dirs = [class_dir(i, n, names) for i, n in enumerate(names)]
        label = {"label": {"names": dirs, "_type": "ClassLabel"}} if names else {}
        return {"image": {"_type": "Image"}, **label}
    return None


def _first_shard(dataset: Dataset) -> Path:
    return dataset.root / str(dataset.manifest["shards"][0]["file"])


def _shard_features(dataset: Dataset) -> dict[str, Any] | None:
    """The `huggingface` schema metadata of the first shard: extra columns included."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(_first_shard(dataset)).metadata or {}
    raw = meta.get(HF_SCHEMA_KEY)
    return json.loads(raw)["info"]["features"] if raw else None


def _wds_extra(dataset: Dataset) -> dict[str, str]:
    """The extra fields of the first sample's JSON, with the dtype `datasets` infers for them."""
    with tarfile.open(_first_shard(dataset), mode="r:") as tar:
        member = next((m for m in tar if m.name.endswith(".json")), None)
        reader = tar.extractfile(member) if member is not None else None
        record = json.loads(reader.read()) if reader is not None else {}
    kinds = {bool: "bool", int: "int64", float: "float64", str: "string"}
    return {
        k: kinds.get(type(v), "string")
        for k, v in record.items()
        if k not in ("id", "label", "label_name")
    }


def _q(value: object) -> str:
    """A YAML scalar: JSON's double-quoted strings are valid YAML."""
    return json.dumps(value)


def _yaml_features(features: Mapping[str, Any], indent: str) -> list[str]:
    """Features in the card's list form, as datasets' Features._to_yaml_list() writes them."""
    lines = []
    for name, feature in features.items():
        lines.append(f"{indent}- name: {_q(name)}")
        lines += _yaml_type(feature, indent + "  ")
    return lines


def _yaml_type(feature: Mapping[str, Any], ind: str) -> list[str]:
    kind = feature.get("_type")
    if kind is None:  # a dict of features: a struct
        return [f"{ind}struct:", *_yaml_features(feature, ind)]
    if kind == "Value":
        return [f"{ind}dtype: {_q(feature['dtype'])}"]
    if kind == "Image":
        return [f"{ind}dtype: image"]
    if kind == "ClassLabel":
        names = [f"{ind}      {_q(str(i))}: {_q(n)}" for i, n in enumerate(feature["names"])]
        return [f"{ind}dtype:", f"{ind}  class_label:", f"{ind}    names:", *names]
    raise ValueError(f"no YAML form for feature type {kind!r}")


def size_category(num_rows: int) -> str:
    return next((name for bound, name in _SIZES if num_rows < bound), "n>1B")


def _front_matter(dataset: Dataset) -> str:
    manifest = dataset.manifest
    num_rows = int(manifest.get("num_rows") or 0)
    task = "image-classification" if dataset.class_names else "unconditional-image-generation"
    lines = [
        f"pretty_name: {_q('vaegen synthetic images: ' + dataset.root.resolve().name)}",
        "license: unknown  # set it: generated images follow the decoder's training data",
        "task_categories:",
        f"- {task}",
        "tags:",
        "- synthetic",
        "- vaegen",
        "size_categories:",
        f"- {size_category(num_rows)}",
    ]
    features = card_features(dataset)
    suffix = FORMATS[dataset.format].suffix
    # Always the shards: without configs, `datasets` would load manifest.json as the data
    # (npz has no `datasets` builder: it then says so instead).
    lines += ["configs:", "- config_name: default", "  data_files:", "  - split: train",
              f"    path: {_q(f'part-*{suffix}' if suffix else '*/*.png')}"]  # fmt: skip
    if dataset.format == "imagefolder" and features is not None:
        # The folder builder keeps its own inferred labels (folder names, sorted) unless the
        # config gives features: these map each folder to its class's own index.
        lines += [f"  drop_labels: {'false' if dataset.class_names else 'true'}",
                  "  features:", *_yaml_features(features, "  ")]  # fmt: skip
    lines.append("dataset_info:")
    if features is not None:
        lines += ["  features:", *_yaml_features(features, "  ")]
    shard_bytes = sum(int(s.get("bytes") or 0) for s in manifest.get("shards") or [])
    # num_bytes is the files' size here (Hugging Face's is the Arrow size, unknown until
    # loaded); `datasets` checks only num_examples.
    lines += ["  splits:", "  - name: train", f"    num_bytes: {shard_bytes}",
              f"    num_examples: {num_rows}", f"  download_size: {shard_bytes}",
              f"  dataset_size: {shard_bytes}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _source_dataset(dataset: Dataset, scores: Mapping[str, Any] | None) -> str:
    """The decoder's training dataset: eval knows it, else the decoder's `dataset` prop."""
    known = ((scores or {}).get("run") or {}).get("train_dataset")
    if known:
        return str(known)
    path = (dataset.manifest.get("model") or {}).get("path")
    try:
        from vaegen.contracts import load_onnx

        props = {p.key: p.value for p in load_onnx(str(path)).metadata_props}
    except Exception:  # noqa: BLE001 - moved, unreadable or no onnx: the card says unknown
        return "unknown (not in the decoder's metadata)"
    return props.get("dataset") or "unknown (not in the decoder's metadata)"


def _body(dataset: Dataset, scores: Mapping[str, Any] | None) -> str:
    manifest = dataset.manifest
    spec, model = manifest.get("spec") or {}, manifest.get("model") or {}
    rows = [
        ("decoder sha256", f"`{spec.get('model_sha256') or model.get('sha256')}`"),
        ("decoder trained on", _source_dataset(dataset, scores)),
        ("decoder likelihood", model.get("likelihood")),
        ("image shape (C, H, W)", list(dataset.image_shape)),
        ("vaegen version", manifest.get("vaegen_version")),
        *((f"spec: {k}", f"`{json.dumps(v)}`") for k, v in spec.items() if k != "model_sha256"),
    ]
    parts = [
        f"# {dataset.root.resolve().name}\n",
        "Synthetic images made by `vaegen generate` from a VAE decoder exported to ONNX. "
        "manifest.json lists every shard with its sha256 and seed: the same spec and decoder "
        "give the same bytes.\n",
        "## Generation\n",
        _table(("field", "value"), rows),
        "## Classes\n",
        _table(("label", "name", "rows"), _class_rows(dataset)),
        loading_section(dataset),
        _scores_section(scores),
    ]
    return "\n".join(parts)


def _class_rows(dataset: Dataset) -> list[tuple[object, ...]]:
    counts = dataset.manifest.get("class_counts") or {}
    names = dataset.class_names
    out: list[tuple[object, ...]] = []
    for label, n in counts.items():
        i = int(label)
        out.append((i, names[i] if 0 <= i < len(names) else "(unlabeled)", n))
    return out


def _scores_section(scores: Mapping[str, Any] | None) -> str:
    head = "## Scores\n\n"
    if not scores:
        return head + (
            "Not scored yet: `vaegen eval RUN --samples DATASET_DIR --fid --cas` writes "
            "its scores here.\n"
        )
    rows = []
    for dotted, what in SCORE_KEYS.items():
        section, key = dotted.split(".")
        value = (scores.get(section) or {}).get(key)
        if value is not None:
            rows.append((what, f"{value:.4g}" if isinstance(value, float) else value))
    extractor = (scores.get("fid") or {}).get("feature_extractor")
    note = f"FID, KID, precision and recall on {extractor} features. " if extractor else ""
    return (
        head
        + f"From `vaegen eval` ({note}REPORT/metrics.json has every figure):\n\n"
        + (_table(("metric", "value"), rows) if rows else "(no score was computed)\n")
    )


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    def line(cells: tuple[object, ...]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    sep = "| " + " | ".join("---" for _ in header) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)]) + "\n"
