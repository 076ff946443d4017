"""`vaegen verify`: every shard against the manifest; --resume repairs exactly the bad ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaegen.cli import app
from vaegen.dataset_format import MANIFEST
from vaegen.errors import InternalFailure
from workers.job import run_generation
from workers.options import GenerateOptions
from workers.spec import build_spec
from workers.verify import check_complete, verify_dataset

ARGS = ["--num-samples", "300", "--shard-size", "100", "--batch-size", "50", "--seed", "5"]


@pytest.fixture(scope="module")
def dataset(local_ray, cvae_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("verify") / "ds"
    result = CliRunner().invoke(app, ["generate", str(cvae_onnx), *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def test_verify_names_the_bad_shards_and_resume_repairs_them(
    dataset: Path, cvae_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(dataset, out)
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0
    (out / "part-00001.parquet").unlink()
    corrupt = out / "part-00002.parquet"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the sha256 tells
    corrupt.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1, result.output
    assert "part-00001.parquet (missing)" in result.output
    assert "part-00002.parquet (sha256)" in result.output
    assert "part-00000.parquet" not in result.output
    resumed = CliRunner().invoke(
        app, ["generate", str(cvae_onnx), *ARGS, "--out", str(out), "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["execution"]["resumed_shards"] == 1  # exactly the two bad ones redone
    assert _bytes(out) == _bytes(dataset)
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0


def test_verify_checks_counts_against_the_plan(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(dataset, out)
    manifest = json.loads((out / MANIFEST).read_text())
    counts = manifest["shards"][0]["class_counts"]
    first, second = sorted(counts)[:2]
    counts[first], counts[second] = counts[first] + 1, counts[second] - 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    verdict = verify_dataset(out)
    assert [b.describe() for b in verdict.bad] == ["part-00000.parquet (class counts)"]


def test_an_incomplete_dataset_is_not_intact(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(dataset, out)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["shards"][-1]
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    verdict = verify_dataset(out)
    assert not verdict.intact and [b.why for b in verdict.bad] == ["not written"]


def test_completion_is_refused_over_a_missing_or_truncated_shard(dataset: Path) -> None:
    manifest = json.loads((dataset / MANIFEST).read_text())
    check_complete(dataset, manifest)
    manifest["shards"][1]["bytes"] += 1
    manifest["shards"][2]["file"] = "part-00099.parquet"
    with pytest.raises(InternalFailure, match="--resume") as info:
        check_complete(dataset, manifest)
    message = str(info.value)
    assert "part-00099.parquet (missing)" in message and "part-00001.parquet (size" in message


def test_verify_an_imagefolder_dataset(local_ray, cvae_onnx: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "img"
    spec = build_spec(str(cvae_onnx), 40, shard_size=20, batch_size=20, format="imagefolder")
    run_generation(spec, out, GenerateOptions(workers=1, show_progress=False))
    assert verify_dataset(out).intact
    next(out.rglob("25.png")).unlink()
    assert [b.describe() for b in verify_dataset(out).bad] == ["shard 1 (missing)"]


def test_verify_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output
