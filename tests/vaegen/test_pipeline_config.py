"""Pipeline config parsing and stage stamps (fast; the end-to-end run is in test_pipeline_run)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaegen.errors import VaegenError
from vaegen.pipeline import STAGES, load_config, stage_stamps
from vaegen.pipeline_cli import app

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["digits.toml", "mnist.toml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.train["dataset"] in ("digits", "mnist")
    assert cfg.onnx_path == cfg.out / "run" / "export" / "decoder.onnx"


@pytest.mark.parametrize(
    "text, message",
    [
        ("out = 'x'\n[train]\nepochz = 3\n", "unknown keys"),
        ("out = 'x'\n[generate]\nnum_sample = 3\n", "unknown keys"),
        ("[train]\nepochs = 3\n", "out"),
        ("out = 'x'\n[train\n", "not valid TOML"),
        ("out = 'x'\ntrain = 3\n", "must be a table"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(VaegenError, match=message):
        load_config(path)


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("out = 'x'\n[eval]\nfidd = true\n")
    result = CliRunner().invoke(app, ["--config", str(path)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(app, ["--config", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2


def test_a_changed_section_restamps_it_and_everything_downstream(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "digits.toml")
    base = stage_stamps(cfg)
    changed = stage_stamps(dataclasses.replace(cfg, generate={**cfg.generate, "num_samples": 123}))
    assert [base[s] == changed[s] for s in STAGES] == [True, True, False, False]
    retrained = stage_stamps(dataclasses.replace(cfg, train={**cfg.train, "epochs": 1}))
    assert all(base[s] != retrained[s] for s in STAGES)


@pytest.mark.parametrize("name", ["digits.toml", "mnist.toml"])
def test_loading_a_config_imports_no_torch(name: str) -> None:
    """The loader lists each stage's keys from torch-free modules; a fresh interpreter shows it."""
    code = (
        "import sys\n"
        "from vaegen.pipeline import load_config\n"
        "load_config(sys.argv[1])\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'onnx', 'typer') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "configs" / name)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "[]"


def test_every_train_and_eval_option_is_a_pipeline_key(tmp_path: Path) -> None:
    from eval.options import EvalOptions
    from trainer.options import CONFIGS
    from vaegen.options import flag_fields

    def toml(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return str(list(value))
        return repr(value)

    lines = ["out = 'x'", "[train]"]
    lines += [
        f"{f.name} = {toml(f.default)}" for f in flag_fields(*CONFIGS) if f.default is not None
    ]
    lines += ["[eval]"]
    lines += [
        f"{f.name} = {toml(f.default)}"
        for f in flag_fields(EvalOptions)
        if f.default is not None and f.name != "samples"
    ]
    path = tmp_path / "all.toml"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_config(path)
    assert len(cfg.train) > 15 and "figures" in cfg.eval  # no key was refused
