"""Judge-filtered generation (--judge, --min-confidence) on a real local Ray and onnxruntime.

Exact per-class counts with every row accepted by the judge, byte identity across --workers,
--batch-size and a SIGKILLed driver's --resume, the confidence column in every format, the
acceptance floor, and the refusals. The judge is a tiny judge.onnx built here with onnx.helper:
a linear classifier on the test decoder's own class offsets, so it agrees with the decoder
often but not always (at P = 0.9 its acceptance runs from about 10% for class 4 to 95%).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vaegen.contracts import sha256_file
from vaegen.dataset_format import FORMATS, JUDGE_CONFIDENCE, MANIFEST
from vaegen.dataset_reader import open_dataset, read_rows
from vaegen.errors import VaegenError
from vaegen.judge_onnx import JudgeSession
from workers.cli import app
from workers.decoder_meta import read_decoder
from workers.job import SHARD_GATE_ENV, run_generation
from workers.judge import JudgeScorer
from workers.judge_filter import FilterRule, candidates_per_class, filter_shard
from workers.options import GenerateOptions
from workers.sampler import Decoder, SamplerConfig
from workers.spec import JobSpec, build_spec, plan_shards, shard_inputs

REPO = Path(__file__).resolve().parents[2]
N, P = 150, 0.9
COUNTS = "0=30,3=50,4=40,c7=30"
WANT = {0: 30, 3: 50, 4: 40, 7: 30}
SPEC_ARGS = ["--num-samples", str(N), "--class-counts", COUNTS, "--shard-size", "64",
             "--batch-size", "50", "--seed", "5"]  # fmt: skip


def make_judge(
    path: Path,
    decoder: Path,
    *,
    scale: float = 2.0,
    never: int | None = None,
    class_names: list[str] | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> Path:
    """judge.onnx: softmax((image / 255 - 0.5) @ A + c), A from the decoder's class offsets V."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(decoder)).graph.initializer}
    info = read_decoder(decoder)
    shape = image_shape or info.image_shape
    d = int(np.prod(shape))
    v = weights["V"][:, :d]  # the decoder's class offsets (a smaller shape takes their start)
    bias = np.zeros(len(v), np.float32)
    if never is not None:
        bias[never] = -1e4  # never the top-1 class, whatever the image
    init = {
        "A": ((v - v.mean(0)).T * scale / 8).astype(np.float32),
        "c": bias,
        "s": np.array(1 / 255, np.float32),
        "half": np.array(0.5, np.float32),
        "flat_shape": np.array([-1, d], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "s"], ["x"]),
        helper.make_node("Sub", ["x", "half"], ["xc"]),
        helper.make_node("Reshape", ["xc", "flat_shape"], ["features"]),
        helper.make_node("MatMul", ["features", "A"], ["logits0"]),
        helper.make_node("Add", ["logits0", "c"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "judge",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", *shape])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", len(v)]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", d])],
        initializer=[numpy_helper.from_array(a, k) for k, a in init.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = class_names or list(info.class_names)
    helper.set_model_props(model, {
        "vaegen_judge_version": "1", "num_classes": str(len(names)),
        "class_names": json.dumps(names), "image_shape": json.dumps(list(shape)),
        "test_accuracy": "0.99", "dataset": "test",
    })  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def judge(cvae_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_judge(tmp_path_factory.mktemp("judge") / "judge.onnx", cvae_onnx)


def _spec(model: Path, judge: Path, **kw) -> JobSpec:  # noqa: ANN003
    args = dict(class_counts=COUNTS, shard_size=64, batch_size=50, seed=5, judge=str(judge),
                min_confidence=P)  # fmt: skip
    return build_spec(str(model), N, **{**args, **kw})


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def _hashes(out: Path) -> list[str]:
    manifest = _manifest(out)
    for shard in manifest["shards"]:
        if shard["file"]:
            assert sha256_file(out / shard["file"]) == shard["sha256"]
    return [s["sha256"] for s in manifest["shards"]]


def _parquet_confidence(out: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    parts = sorted(out.glob("part-*.parquet"))
    cols = [pq.read_table(p, columns=[JUDGE_CONFIDENCE]).column(0).to_numpy() for p in parts]
    return np.concatenate(cols)


def _no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def reference(local_ray, cvae_onnx: Path, judge: Path, tmp_path_factory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("ref") / "ds"
    run_generation(_spec(cvae_onnx, judge), out, GenerateOptions(workers=1, show_progress=False))
    return out


def test_exact_counts_and_every_row_accepted(reference: Path, judge: Path) -> None:
    manifest = _manifest(reference)
    rows = read_rows(open_dataset(reference))
    assert np.array_equal(rows.ids, np.arange(N))
    assert Counter(rows.labels.tolist()) == WANT
    assert manifest["complete"] and manifest["class_counts"] == {str(k): v for k, v in WANT.items()}
    # The judge, run again here on what was written, accepts every row with the confidence
    # the dataset records.
    probs, _ = JudgeSession(judge, threads=1).predict(rows.images)
    confidence = _parquet_confidence(reference)
    assert confidence.dtype == np.float32
    assert np.array_equal(probs.argmax(axis=1), rows.labels)
    assert np.array_equal(probs[np.arange(N), rows.labels], confidence)
    assert (confidence >= np.float32(P)).all()
    assert _no_temp_files(reference)


def test_manifest_records_the_judge_and_acceptance(reference: Path, judge: Path) -> None:
    manifest = _manifest(reference)
    assert manifest["spec"]["judge_sha256"] == sha256_file(judge)
    assert manifest["spec"]["min_confidence"] == P and "temperature" not in manifest["spec"]
    block = manifest["judge"]
    assert block["sha256"] == sha256_file(judge) and block["min_confidence"] == P
    assert block["min_acceptance"] == 0.01 and block["path"] == str(judge.resolve())
    # Totals are the sums over the shards; every class drew at least what it kept.
    for key in ("drawn", "accepted"):
        total = Counter()
        for shard in manifest["shards"]:
            total.update(shard["judge"][key])
        assert block[key] == {k: total[k] for k in sorted(total, key=int)}
    for label, kept in manifest["class_counts"].items():
        drawn, accepted = block["drawn"][label], block["accepted"][label]
        assert drawn >= accepted >= kept
        assert block["acceptance_rate"][label] == round(accepted / drawn, 6)
    # The filter did work: class 4 (about 1 in 10 accepted) took several rounds.
    assert block["acceptance_rate"]["4"] < 0.3 < block["acceptance_rate"]["7"]
    assert sum(block["drawn"].values()) > 2 * N


def test_workers_and_batch_size_never_change_the_bytes(
    reference: Path, cvae_onnx: Path, judge: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    manifest = run_generation(
        _spec(cvae_onnx, judge, batch_size=7), out, GenerateOptions(workers=2, show_progress=False)
    )
    assert manifest["execution"]["workers"] == 2
    assert _hashes(out) == _hashes(reference)
    assert manifest["judge"]["drawn"] == _manifest(reference)["judge"]["drawn"]


def test_only_rejected_rows_are_redrawn(cvae_onnx: Path, judge: Path) -> None:
    """A row the judge accepts in round 0 keeps the plain (unfiltered) sample; no label moves."""
    spec = _spec(cvae_onnx, judge, shard_size=N)
    plan = plan_shards(spec)[0]
    cfg = SamplerConfig(out_dir="/nonexistent", fmt="parquet", encoding="raw", batch_size=50,
                        latent_dim=8, image_shape=(1, 8, 8), class_names=spec.decoder.class_names,
                        conditional=True)  # fmt: skip
    decoder = Decoder(cvae_onnx.read_bytes(), cfg)
    scorer = JudgeScorer(judge.read_bytes(), P)
    shard = filter_shard(plan, decoder.decode, scorer, FilterRule(8, 1.0, 0.01, cfg.class_names))
    _, labels, z = shard_inputs(plan, 8)
    plain, _ = decoder.decode(z, labels)
    first, _ = scorer.score(plain, labels)
    assert np.array_equal(shard.labels, labels) and shard.filled.all()
    assert np.array_equal(shard.images[first], plain[first])
    assert 0 < first.sum() < N and not np.array_equal(shard.images, plain)
    assert scorer.score(shard.images, labels)[0].all()


def test_candidates_grow_until_the_floor_can_judge() -> None:
    need, drawn = np.array([5, 0, 10]), np.array([5, 7, 20])
    got = candidates_per_class(need, drawn, np.array([0, 7, 10]), cap=1000)
    assert got.tolist() == [25, 0, 20]  # none accepted yet: need x drawn; else need / rate
    capped = candidates_per_class(np.array([100, 100]), np.array([100, 100]),
                                  np.array([1, 50]), cap=1000)  # fmt: skip
    assert capped.sum() <= 1000 and capped[0] > capped[1] > 0


@pytest.mark.parametrize("fmt", [f for f in ("npz", "imagefolder", "webdataset") if f in FORMATS])
def test_every_format_carries_the_confidence(
    reference: Path, cvae_onnx: Path, judge: Path, tmp_path: Path, fmt: str
) -> None:
    want = _parquet_confidence(reference)  # the same spec in another format: the same rows
    out = tmp_path / fmt
    run_generation(_spec(cvae_onnx, judge, format=fmt), out, GenerateOptions(show_progress=False))
    if fmt == "npz":
        parts = [np.load(p) for p in sorted(out.glob("part-*.npz"))]
        got = np.concatenate([p[JUDGE_CONFIDENCE] for p in parts])
    elif fmt == "imagefolder":
        with open(out / "labels.csv", newline="") as fh:
            got = np.array([row[JUDGE_CONFIDENCE] for row in csv.DictReader(fh)], np.float32)
    else:
        import tarfile

        got = []
        for part in sorted(out.glob("part-*.tar")):
            with tarfile.open(part) as tar:
                got += [json.load(tar.extractfile(m))[JUDGE_CONFIDENCE]
                        for m in tar.getmembers() if m.name.endswith(".json")]  # fmt: skip
        got = np.array(got, np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(
        read_rows(open_dataset(out)).images, read_rows(open_dataset(reference)).images
    )


def test_imagefolder_resume_keeps_labels_csv(
    local_ray,
    cvae_onnx: Path,
    judge: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    out = tmp_path / "folder"
    spec = _spec(cvae_onnx, judge, format="imagefolder")
    run_generation(spec, out, GenerateOptions(show_progress=False))
    labels_csv = (out / "labels.csv").read_bytes()
    next(out.glob("c4/*.png")).unlink()  # one shard's file is gone: that shard is redone
    manifest = run_generation(spec, out, GenerateOptions(resume=True, show_progress=False))
    assert manifest["execution"]["resumed_shards"] == len(manifest["shards"]) - 1
    assert (out / "labels.csv").read_bytes() == labels_csv
    assert JUDGE_CONFIDENCE in labels_csv.decode().splitlines()[0]


def test_a_class_the_judge_never_accepts_exits_2(
    local_ray,
    cvae_onnx: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    never = make_judge(tmp_path / "never.onnx", cvae_onnx, never=3)
    out = tmp_path / "ds"
    args = [str(cvae_onnx), *SPEC_ARGS, "--judge", str(never), "--min-confidence", "0.5",
            "--workers", "2", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "class 3 ('c3')" in lines[0] and "0.00%" in lines[0], lines
    assert "--min-acceptance 0.01" in lines[0] and "Traceback" not in result.output
    manifest = _manifest(out)
    assert not manifest["complete"] and manifest["shards"] == []  # every shard holds a 3
    assert _no_temp_files(out) and sorted(p.name for p in out.iterdir()) == [MANIFEST]


def test_resume_refuses_another_judge_or_threshold(
    reference: Path, cvae_onnx: Path, judge: Path, tmp_path: Path
) -> None:
    before = sorted((p.name, p.stat().st_mtime_ns) for p in reference.iterdir())
    resume = GenerateOptions(resume=True, show_progress=False)
    with pytest.raises(VaegenError, match=r"different spec \(min_confidence: 0.9 -> 0.8\)"):
        run_generation(_spec(cvae_onnx, judge, min_confidence=0.8), reference, resume)
    other = make_judge(tmp_path / "other.onnx", cvae_onnx, scale=3.0)
    with pytest.raises(VaegenError, match="different spec \\(judge_sha256: "):
        run_generation(_spec(cvae_onnx, other), reference, resume)
    plain = build_spec(str(cvae_onnx), N, class_counts=COUNTS, shard_size=64, seed=5)
    with pytest.raises(VaegenError, match="judge_sha256: '[0-9a-f]{64}' -> None, "
                                          "min_confidence: 0.9 -> None"):  # fmt: skip
        run_generation(plain, reference, resume)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in reference.iterdir()) == before


def test_judge_must_fit_the_decoder(cvae_onnx: Path, vae_onnx: Path, judge: Path,
                                    tmp_path: Path) -> None:  # fmt: skip
    bad_shape = make_judge(tmp_path / "shape.onnx", cvae_onnx, image_shape=(1, 4, 4))
    with pytest.raises(VaegenError, match=r"judges 10 classes of \[1, 4, 4\] images"):
        _spec(cvae_onnx, bad_shape)
    names = make_judge(tmp_path / "names.onnx", cvae_onnx, class_names=[str(i) for i in range(10)])
    with pytest.raises(VaegenError, match="a judge of another dataset"):
        _spec(cvae_onnx, names)
    with pytest.raises(VaegenError, match="unconditional VAE"):
        build_spec(str(vae_onnx), 10, judge=str(judge))
    with pytest.raises(VaegenError, match="--min-confidence needs --judge"):
        build_spec(str(cvae_onnx), 10, min_confidence=0.5)
    with pytest.raises(VaegenError, match=r"--min-confidence must lie in \[0, 1\]"):
        _spec(cvae_onnx, judge, min_confidence=1.5)
    with pytest.raises(VaegenError, match="not a vaegen judge"):
        _spec(cvae_onnx, cvae_onnx)
    runner = CliRunner()
    for extra, message in (
        (["--judge", str(bad_shape)], "judges 10 classes"),
        (["--min-acceptance", "0.1"], "--min-acceptance needs --judge"),
        (["--judge", str(judge), "--min-acceptance", "0"], "--min-acceptance must lie in"),
    ):
        result = runner.invoke(app, [str(cvae_onnx), *SPEC_ARGS, *extra, "--out",
                                     str(tmp_path / "never-written")])  # fmt: skip
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "never-written").exists()


@pytest.mark.slow
def test_killed_driver_resumes_to_identical_bytes(
    reference: Path, cvae_onnx: Path, judge: Path, tmp_path: Path, kill_driver
) -> None:  # noqa: ANN001
    out = tmp_path / "ds"
    # The actor writes one shard, then waits at a gate that never opens: the driver dies there.
    env = {**os.environ, SHARD_GATE_ENV: str(tmp_path / "gate"), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    args = [str(cvae_onnx), *SPEC_ARGS, "--judge", str(judge), "--min-confidence", str(P)]
    cmd = [sys.executable, "-m", "workers", *args, "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_a_shard(out, proc)
        kill_driver(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = _manifest(out)
    assert not killed["complete"] and len(killed["shards"]) == 1
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    manifest = _manifest(out)
    assert manifest["complete"] and manifest["execution"]["resumed_shards"] == 1
    assert _hashes(out) == _hashes(reference)
    assert manifest["judge"] == _manifest(reference)["judge"]


def _wait_for_a_shard(out: Path, proc: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early: {proc.communicate()}")
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
            if _manifest(out)["shards"]:
                return
        time.sleep(0.05)
    raise AssertionError("the first shard never came")
