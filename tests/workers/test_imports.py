"""workers/ runs on a GPU worker with numpy, onnxruntime and pyarrow only: never torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ["cli", "decoder_meta", "job", "manifest", "sampler", "spec", "writers"]


def test_workers_never_import_torch_or_trainer() -> None:
    code = (
        "import sys\n"
        + "".join(f"import workers.{m}\n" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer'))\n"
        + "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_module_list_is_complete() -> None:
    found = {p.stem for p in (REPO / "workers").glob("*.py")} - {"__init__", "__main__"}
    assert found == set(MODULES)
