"""workers/ runs on a GPU worker with numpy, onnxruntime and pyarrow only: never torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ["cli", "decoder_meta", "envfail", "job", "judge", "judge_filter", "layout",
           "manifest", "options", "outdir", "pool", "sampler", "spec", "verify", "verify_cli",
           "writers"]  # fmt: skip


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


def test_writing_shards_never_imports_pandas(tmp_path: Path) -> None:
    # pa.array()/pa.table() import pandas to ask whether their input is a DataFrame: 0.26 s
    # on every actor's first shard. The writers build Arrow arrays from buffers instead.
    code = (
        "import sys\nimport numpy as np\nfrom workers.writers import write_shard\n"
        "rng = np.random.default_rng(0)\n"
        "images = rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)\n"
        "for i, (enc, labels) in enumerate([('raw', rng.integers(0, 3, 20)),\n"
        "                                   ('png', np.full(20, -1))]):\n"
        "    write_shard(sys.argv[1], fmt='parquet', encoding=enc, index=i, ids=np.arange(20),\n"
        "                labels=labels, images=images, class_names=('a', 'b', 'c'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pandas'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "[]", result.stdout
