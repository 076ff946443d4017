"""End-to-end generation on a local Ray: exact counts, worker-count invariance, formats,
resume after a killed driver, a killed worker, and CLI errors that need Ray."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from vaegen.contracts import sha256_file
from vaegen.dataset_format import MANIFEST, decode_png
from vaegen.dataset_reader import read_shard
from workers.cli import app
from workers.job import SHARD_GATE_ENV, run_generation
from workers.options import GenerateOptions
from workers.spec import JobSpec, build_spec

REPO = Path(__file__).resolve().parents[2]
# Uneven on purpose: one tiny class, and 1000 rows in shards of 128 leave a short last shard.
COUNTS = "0=37,3=500,c5=463"
SPEC_ARGS = ["--num-samples", "1000", "--class-counts", COUNTS, "--shard-size", "128",
             "--batch-size", "50", "--seed", "7"]  # fmt: skip
WANT = {0: 37, 3: 500, 5: 463}


def _spec(model: Path, **kw) -> JobSpec:  # noqa: ANN003
    args = dict(class_counts=COUNTS, shard_size=128, batch_size=50, seed=7)
    return build_spec(str(model), 1000, **{**args, **kw})


def _shard_hashes(out: Path) -> list[tuple[str, str]]:
    """(file, sha256) per shard, as recorded; every file on disk must match its record."""
    manifest = json.loads((out / MANIFEST).read_text())
    for shard in manifest["shards"]:
        assert sha256_file(out / shard["file"]) == shard["sha256"], shard["file"]
    return [(s["file"], s["sha256"]) for s in manifest["shards"]]


def _read_all(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    parts = [read_shard(p) for p in sorted(out.glob("part-*.parquet"))]
    parts = [(rows.ids, rows.labels, rows.images) for rows in parts]
    names = []
    import pyarrow.parquet as pq

    for p in sorted(out.glob("part-*.parquet")):
        names += pq.read_table(p, columns=["label_name"]).column(0).to_pylist()
    ids, labels, images = (np.concatenate(x) for x in zip(*parts, strict=True))
    return ids, labels, images, names


def _no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def ray_local():  # noqa: ANN201
    import ray

    from vaegen.raycluster import init_ray

    started = not ray.is_initialized()
    init_ray()
    yield
    if started:  # leave a Ray that another module started to its owner
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(ray_local, cvae_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("ref") / "ds"
    run_generation(_spec(cvae_onnx), out, GenerateOptions(workers=1, show_progress=False))
    return out


def test_uneven_class_counts_are_exact(reference: Path) -> None:
    manifest = json.loads((reference / MANIFEST).read_text())
    ids, labels, images, names = _read_all(reference)
    assert np.array_equal(np.sort(ids), np.arange(1000)) and len(set(ids.tolist())) == 1000
    assert Counter(labels.tolist()) == WANT
    assert names == [f"c{label}" for label in labels]
    assert manifest["complete"] and manifest["num_rows"] == 1000
    assert manifest["class_counts"] == {"0": 37, "3": 500, "5": 463}
    assert manifest["spec"]["class_counts"] == manifest["class_counts"]
    assert [s["rows"] for s in manifest["shards"]] == [128] * 7 + [104]
    for shard in manifest["shards"]:
        assert sha256_file(reference / shard["file"]) == shard["sha256"]
        got = Counter(read_shard(reference / shard["file"]).labels.tolist())
        assert {str(k): v for k, v in got.items()} == shard["class_counts"]
    assert images.std() > 10  # real decoder output, not zeros
    assert _no_temp_files(reference)


def test_two_workers_give_identical_shards(
    reference: Path, cvae_onnx: Path, tmp_path: Path
) -> None:
    manifest = run_generation(
        _spec(cvae_onnx), tmp_path / "ds", GenerateOptions(workers=2, show_progress=False)
    )
    assert manifest["execution"]["workers"] == 2 and manifest["execution"]["threads"] == 1
    assert _shard_hashes(tmp_path / "ds") == _shard_hashes(reference)


def test_batch_size_never_changes_the_bytes(
    reference: Path, cvae_onnx: Path, tmp_path: Path
) -> None:
    # Which is why a resume may change --batch-size, and why CPU and GPU defaults may differ.
    out = tmp_path / "ds"
    run_generation(
        _spec(cvae_onnx, batch_size=1000), out, GenerateOptions(workers=1, show_progress=False)
    )
    assert _shard_hashes(out) == _shard_hashes(reference)


def test_png_npz_and_imagefolder_hold_the_raw_pixels(
    reference: Path, cvae_onnx: Path, tmp_path: Path
) -> None:
    ref_ids, ref_labels, ref_images, _ = _read_all(reference)
    by_id = ref_images[np.argsort(ref_ids)]
    label_by_id = ref_labels[np.argsort(ref_ids)]

    png = tmp_path / "png"
    run_generation(
        _spec(cvae_onnx, encoding="png"), png, GenerateOptions(workers=2, show_progress=False)
    )
    ids, labels, images, _ = _read_all(png)
    assert np.array_equal(images, by_id[ids]) and np.array_equal(labels, label_by_id[ids])

    npz = tmp_path / "npz"
    run_generation(
        _spec(cvae_onnx, format="npz"), npz, GenerateOptions(workers=2, show_progress=False)
    )
    for part in sorted(npz.glob("part-*.npz")):
        with np.load(part) as data:
            assert np.array_equal(data["images"], by_id[data["id"]])
            assert np.array_equal(data["label"], label_by_id[data["id"]])

    folder = tmp_path / "folder"
    run_generation(
        _spec(cvae_onnx, format="imagefolder"),
        folder,
        GenerateOptions(workers=2, show_progress=False),
    )
    with open(folder / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == list(range(1000))
    assert Counter(int(r["label"]) for r in rows) == WANT
    assert len(list(folder.glob("*/*.png"))) == 1000
    for row in rows[::97]:
        sample_id = int(row["id"])
        assert row["path"] == f"c{row['label']}/{sample_id}.png"
        assert np.array_equal(decode_png((folder / row["path"]).read_bytes()), by_id[sample_id])
    assert _no_temp_files(folder)


def test_plain_vae_is_unlabeled(ray_local, vae_onnx: Path, tmp_path: Path) -> None:  # noqa: ANN001
    spec = build_spec(str(vae_onnx), 50, shard_size=20)
    manifest = run_generation(spec, tmp_path / "ds", GenerateOptions(show_progress=False))
    ids, labels, _, names = _read_all(tmp_path / "ds")
    assert manifest["class_counts"] == {"-1": 50} and manifest["class_names"] == []
    assert (labels == -1).all() and set(names) == {""} and sorted(ids) == list(range(50))


def test_resume_regenerates_only_a_corrupt_shard(
    reference: Path, cvae_onnx: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    victim = out / "part-00002.parquet"
    victim.write_bytes(victim.read_bytes()[:-10])
    (out / "part-00005.parquet").unlink()
    manifest = run_generation(
        _spec(cvae_onnx), out, GenerateOptions(resume=True, show_progress=False)
    )
    assert manifest["execution"]["resumed_shards"] == 6
    assert manifest["execution"]["generated_samples"] == 256
    assert _shard_hashes(out) == _shard_hashes(reference)


def test_resume_refuses_another_spec_or_model(
    reference: Path, tmp_path: Path, make_decoder
) -> None:  # noqa: ANN001
    runner = CliRunner()
    model = json.loads((reference / MANIFEST).read_text())["model"]["path"]
    result = runner.invoke(app, [model, *SPEC_ARGS[:-1], "8", "--out", str(reference), "--resume"])
    assert result.exit_code == 2 and "different spec (seed: 7 -> 8)" in result.output
    other = make_decoder(tmp_path / "other.onnx", seed=1)
    result = runner.invoke(app, [str(other), *SPEC_ARGS, "--out", str(reference), "--resume"])
    assert result.exit_code == 2 and "another model" in result.output
    result = runner.invoke(app, [model, *SPEC_ARGS, "--out", str(reference)])
    assert result.exit_code == 2 and "--resume or --overwrite" in result.output
    assert "Traceback" not in result.output


def test_gpu_request_without_gpu_exits_2(ray_local, cvae_onnx: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app, [str(cvae_onnx), "-n", "10", "--gpus-per-worker", "1", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "GPU" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_user_error_in_an_actor_task_is_one_line(ray_local) -> None:  # noqa: ANN001
    import ray

    from vaegen.errors import VaegenError
    from workers.pool import user_error

    reason = "3000000000 bytes of binary in one shard; use a smaller --shard-size"

    class Refuses:  # a real actor, as the pool's, whose method raises a user error
        def __call__(self) -> None:
            raise VaegenError(reason)

    actor = ray.remote(Refuses).remote()
    with pytest.raises(Exception) as caught:  # noqa: PT011 - Ray's wrapper, checked below
        ray.get(actor.__call__.remote())
    ray.kill(actor)
    # Ray's wrapper is a VaegenError too, but its text is the actor's traceback: the CLI would
    # print all of it. user_error keeps the one line.
    assert isinstance(caught.value, VaegenError) and len(str(caught.value).splitlines()) > 1
    error = user_error(caught.value)
    assert isinstance(error, VaegenError) and error.exit_code == 2 and str(error) == reason
    assert user_error(RuntimeError("an internal failure")) is None


def _wait_for_shards(out: Path, done, proc: subprocess.Popen | None = None) -> list[dict]:  # noqa: ANN001
    """The manifest's shards once `done(shards)` holds (the shard gate holds the job there)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited early: {proc.communicate()}")
        try:
            shards = json.loads((out / MANIFEST).read_text())["shards"]
        except (OSError, json.JSONDecodeError, KeyError):
            shards = []
        if done(shards):
            return shards
        time.sleep(0.05)
    raise AssertionError(f"{out}: the shards never got there")


def _pids(shards: list[dict]) -> set[int]:
    return {s["pid"] for s in shards}


@pytest.mark.slow
def test_killed_worker_is_replaced(
    reference: Path, cvae_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each actor writes one shard, then waits at the gate: the victim is killed holding shards.
    gate = tmp_path / "gate"
    monkeypatch.setenv(SHARD_GATE_ENV, str(gate))
    out = tmp_path / "ds"
    result: dict = {}

    def job() -> None:
        try:
            result["manifest"] = run_generation(
                _spec(cvae_onnx), out, GenerateOptions(workers=2, show_progress=False)
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    try:
        [first] = _wait_for_shards(out, lambda shards: len(shards) >= 1)[:1]
        victim = psutil.Process(first["pid"])
        assert "ray" in " ".join(victim.cmdline()).lower() or "ray::" in victim.name()
        victim.kill()
        # Its replacement comes up and writes its first shard past the gate: a third pid.
        _wait_for_shards(out, lambda shards: len(_pids(shards) - {victim.pid}) == 2)
    finally:
        gate.touch()
        thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    manifest = result["manifest"]
    assert not victim.is_running()
    assert manifest["complete"] and manifest["class_counts"] == {"0": 37, "3": 500, "5": 463}
    assert _shard_hashes(out) == _shard_hashes(reference)
    # The victim wrote one shard; the shards it held were retried by the other two actors.
    assert len(_pids(manifest["shards"])) == 3
    assert [s["pid"] for s in manifest["shards"]].count(victim.pid) == 1
    assert _no_temp_files(out)


@pytest.mark.slow
def test_killed_driver_then_resume_matches_uninterrupted(
    reference: Path, cvae_onnx: Path, tmp_path: Path, kill_driver
) -> None:  # noqa: ANN001
    out = tmp_path / "ds"
    # The actor writes one shard, then waits at a gate that never opens: the driver dies there.
    env = {**os.environ, SHARD_GATE_ENV: str(tmp_path / "gate"), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "workers", str(cvae_onnx), *SPEC_ARGS, "--workers", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_shards(out, lambda shards: len(shards) >= 1, proc)
        kill_driver(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = json.loads((out / MANIFEST).read_text())
    assert not killed["complete"] and len(killed["shards"]) == 1
    result = CliRunner().invoke(app, [str(cvae_onnx), *SPEC_ARGS, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["execution"]["resumed_shards"] == 1
    assert _shard_hashes(out) == _shard_hashes(reference)
    # The SIGKILLed job's lock was taken over and released: no .vaegen.lock is left.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, "README.md"] + [f"part-{i:05d}.parquet" for i in range(8)]
    )
