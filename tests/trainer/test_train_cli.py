"""`vaegen train` rejects bad input with exit code 2 and one line, before starting Ray."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli import app

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--dataset", "cifar100"],
        ["--epochs", "0"],
        ["--latent-dim", "0"],
        ["--beta", "-1"],
        ["--model", "gan"],
        ["--arch", "rnn"],
        ["--likelihood", "poisson"],
        ["--dataset", "mnist", "--data-dir", "/nonexistent/dir"],
        ["--hidden-dims", "a,b"],
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], tmp_path: Path) -> None:
    code, output = _invoke(*args, "--out", str(tmp_path / "run"))
    assert code == 2, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_corrupt_mnist_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    shutil.copytree(SHARED, data)
    raw = bytearray(gzip.decompress((data / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[5000:5010] = b"\xff" * 10
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    code, output = _invoke("--dataset", "mnist", "--data-dir", str(data), "--out", str(tmp_path))
    assert code == 2, output
    assert "corrupt" in output.lower() or "md5" in output.lower()


def test_unwritable_output_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, output = _invoke("--epochs", "1", "--out", str(blocker / "run"))
    assert code == 2, output
    assert "cannot write" in output


def test_flags_reach_the_configs() -> None:
    """CLI text and pipeline TOML values land in the frozen configs; cross-config checks hold."""
    from trainer.options import build_configs
    from vaegen.errors import VaegenError

    model_cfg, train_cfg = build_configs(hidden_dims="3,4", conv_channels=[5], beta=2.0, epochs=1)
    assert model_cfg.hidden_dims == (3, 4) and model_cfg.conv_channels == (5,)
    assert train_cfg.loss.beta == 2.0 and train_cfg.epochs == 1
    assert model_cfg.image_shape == (1, 8, 8) and model_cfg.num_classes == 10  # from digits
    with pytest.raises(VaegenError, match="--binarize"):
        build_configs(likelihood="gaussian", binarize=True)
    with pytest.raises(VaegenError, match="epochz"):
        build_configs(epochz=3)
