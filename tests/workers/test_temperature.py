"""--temperature T: z ~ N(0, T^2 I), part of the spec (recorded; a resume must repeat it).

T = 1 keeps the pinned bytes of tests/workers/test_shard_bytes.py and writes no `temperature`
key, so a dataset from before the option resumes as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vaegen.dataset_format import MANIFEST
from vaegen.dataset_reader import open_dataset, read_rows
from vaegen.errors import VaegenError
from workers.cli import app
from workers.job import run_generation
from workers.options import GenerateOptions
from workers.spec import build_spec, plan_shards, shard_inputs

N = 120
ARGS = dict(class_counts="0=40,2=50,9=30", shard_size=48, batch_size=32, seed=3)


def _spec(model: Path, **kw):  # noqa: ANN003, ANN202
    return build_spec(str(model), N, **{**ARGS, **kw})


def _run(model: Path, out: Path, **kw) -> dict:  # noqa: ANN003
    return run_generation(_spec(model, **kw), out, GenerateOptions(show_progress=False))


def test_latents_scale_by_t_and_labels_stay(cvae_onnx: Path) -> None:
    plan = plan_shards(_spec(cvae_onnx))[1]
    ids, labels, z = shard_inputs(plan, 8)
    for t in (0.5, 1.7):
        ids_t, labels_t, z_t = shard_inputs(plan, 8, t)
        assert np.array_equal(ids_t, ids) and np.array_equal(labels_t, labels)
        assert z_t.dtype == np.float32 and np.array_equal(z_t, z * np.float32(t))
    assert np.array_equal(shard_inputs(plan, 8, 1.0)[2], z)


def test_temperature_changes_the_images_and_is_recorded(
    local_ray,  # noqa: ANN001 - fixture
    cvae_onnx: Path,
    tmp_path: Path,
) -> None:
    import onnx
    from onnx import numpy_helper

    plain = _run(cvae_onnx, tmp_path / "t1")
    cool = _run(cvae_onnx, tmp_path / "t05", temperature=0.5)
    assert "temperature" not in plain["spec"] and cool["spec"]["temperature"] == 0.5
    assert plain["class_counts"] == cool["class_counts"]
    hashes = {s["sha256"] for s in plain["shards"]}
    assert not hashes & {s["sha256"] for s in cool["shards"]}
    # Independently of the sampler: the images are the decoder's at 0.5 * (the T = 1 latents).
    weights = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(cvae_onnx)).graph.initializer
    }
    rows = read_rows(open_dataset(tmp_path / "t05"))
    z = np.concatenate([shard_inputs(p, 8)[2] for p in plan_shards(_spec(cvae_onnx))])
    logits = 0.5 * z.astype(np.float64) @ weights["W"] + weights["V"][rows.labels] + weights["b"]
    want = np.clip(np.round(255 / (1 + np.exp(-logits))), 0, 255)
    diff = np.abs(rows.images.reshape(N, -1).astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    before = read_rows(open_dataset(tmp_path / "t1")).images.astype(float)
    assert rows.images.astype(float).std() < before.std()  # cooler samples vary less


def test_resume_needs_the_same_temperature(
    local_ray,  # noqa: ANN001 - fixture
    cvae_onnx: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "ds"
    _run(cvae_onnx, out, temperature=0.7)
    resume = GenerateOptions(resume=True, show_progress=False)
    with pytest.raises(VaegenError, match=r"different spec \(temperature: 0.7 -> 1.0\)"):
        run_generation(_spec(cvae_onnx), out, resume)
    manifest = run_generation(_spec(cvae_onnx, temperature=0.7), out, resume)
    assert manifest["execution"]["resumed_shards"] == 3 and manifest["complete"]
    # A manifest with no temperature (T = 1, or written before the option) resumes at T = 1.
    plain = tmp_path / "plain"
    _run(cvae_onnx, plain)
    assert "temperature" not in json.loads((plain / MANIFEST).read_text())["spec"]
    manifest = run_generation(_spec(cvae_onnx, temperature=1.0), plain, resume)
    assert manifest["execution"]["resumed_shards"] == 3
    with pytest.raises(VaegenError, match=r"temperature: 1.0 -> 2.0"):
        run_generation(_spec(cvae_onnx, temperature=2.0), plain, resume)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_temperature_must_be_positive(cvae_onnx: Path, tmp_path: Path, value: str) -> None:
    result = CliRunner().invoke(
        app, [str(cvae_onnx), "-n", "10", "--temperature", value, "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "--temperature must be > 0" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
