"""Bad input exits 2 with one line, no traceback, and nothing written (CliRunner, no Ray)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workers.cli import app

REPO = Path(__file__).resolve().parents[2]


def _bad_model(kind: str, tmp_path: Path, make_decoder) -> Path:  # noqa: ANN001
    path = tmp_path / f"{kind}.onnx"
    if kind == "no-metadata":
        make_decoder(path, metadata=False)
    elif kind == "wrong-inputs":
        import onnx

        make_decoder(path, latent_dim=4)
        model = onnx.load(str(path))
        for prop in model.metadata_props:
            if prop.key == "latent_dim":
                prop.value = "8"
        onnx.save(model, str(path))
    elif kind == "text":
        path.write_text("hello\n")
    return path


CASES = [
    ("unknown-class", ["-n", "10", "--class-counts", "0=5,12=5"], "unknown class 12"),
    ("unknown-name", ["-n", "10", "--classes", "c1,dog"], "unknown class 'dog'"),
    ("zero-samples", ["-n", "0"], "--num-samples must be >= 1"),
    ("bad-sum", ["-n", "10", "--class-counts", "0=5,1=6"], "sum to 11"),
    ("bad-format", ["-n", "10", "--format", "tfrecord"], "--format"),
    ("both-modes", ["-n", "10", "--resume", "--overwrite"], "not both"),
    ("bad-workers", ["-n", "10", "--workers", "0"], "--workers must be >= 1"),
]


@pytest.mark.parametrize(("name", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_options(cvae_onnx: Path, tmp_path: Path, name: str, args: list, message: str) -> None:
    _check(CliRunner().invoke(app, [str(cvae_onnx), *args, "--out", str(tmp_path / "ds")]), message)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no-metadata", "not a vaegen decoder"),
        ("wrong-inputs", "input 'z' must have shape [B, 8]"),
        ("text", "not an ONNX model"),
        ("missing", "no such model file"),
    ],
)
def test_bad_models(tmp_path: Path, make_decoder, kind: str, message: str) -> None:  # noqa: ANN001
    model = _bad_model(kind, tmp_path, make_decoder)
    result = CliRunner().invoke(app, [str(model), "-n", "10", "--out", str(tmp_path / "ds")])
    _check(result, message)
    assert not (tmp_path / "ds").exists()


def test_unwritable_output(cvae_onnx: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, [str(cvae_onnx), "-n", "10", "--out", str(blocker / "ds")])
    _check(result, "cannot write --out")
    result = CliRunner().invoke(app, [str(cvae_onnx), "-n", "10", "--out", str(blocker)])
    _check(result, "not a directory")
    assert blocker.read_text() == "x"


def test_non_empty_output(cvae_onnx: Path, tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "precious.txt").write_text("keep me")
    for extra, message in (
        ([], "not empty; pass --resume or --overwrite"),
        (["--overwrite"], "not a vaegen dataset"),
        (["--resume"], "no manifest.json"),
    ):
        args = [str(cvae_onnx), "-n", "10", "--out", str(tmp_path / "ds"), *extra]
        _check(CliRunner().invoke(app, args), message)
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["precious.txt"]


def test_busy_metrics_port(cvae_onnx: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        args = [str(cvae_onnx), "-n", "10", "--out", str(tmp_path / "ds"), "--metrics-port"]
        _check(CliRunner().invoke(app, [*args, str(port)]), "cannot serve metrics")
    assert not (tmp_path / "ds").exists()


def test_vaegen_cli_mounts_generate() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from workers.cli import app; "
         "print(len(app.registered_commands), app.registered_commands[0].callback.__name__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.split() == ["1", "generate"]


def _check(result, message: str) -> None:  # noqa: ANN001 - click Result
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
