"""Imports go one way: the base modules of vaegen import no stage (DESIGN.md "Layout").

Only the top of the package, the CLI and the pipeline, imports trainer, exporter, workers and
eval. Everything else in vaegen (errors, atomic, telemetry, progress, contracts, the DATASET
contract and its reader, ...) is what the stages share, so it must import none of them, not even
lazily inside a function, and no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = {"trainer", "exporter", "workers", "eval"}
TOP = {"__init__", "cli", "pipeline", "pipeline_cli"}  # the layer that wires the stages together
BASE = sorted(p.stem for p in (REPO / "vaegen").glob("*.py") if p.stem not in TOP)


def _imported(path: Path) -> set[str]:
    """Top-level names of every import statement in the file, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_base_modules_name_no_stage() -> None:
    assert {"errors", "atomic", "telemetry", "progress", "contracts", "dataset_format",
            "dataset_reader"} <= set(BASE)  # fmt: skip
    offenders = {m: sorted(_imported(REPO / "vaegen" / f"{m}.py") & STAGES) for m in BASE}
    assert {m: s for m, s in offenders.items() if s} == {}


def test_importing_every_base_module_loads_no_stage_and_no_torch() -> None:
    banned = sorted(STAGES | {"torch"})
    code = (
        "import sys\n"
        + "".join(f"import vaegen.{m}\n" for m in BASE)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {banned}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_the_check_sees_a_lazy_stage_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from workers.spec import build_spec\n    import eval.fid\n")
    assert _imported(module) & STAGES == {"workers", "eval"}
