"""`pip install 'vaegen[worker]'` is enough for `vaegen generate`: a job runs where torch cannot.

The subprocess gets a sitecustomize that refuses to import every module that only the train
and eval extras install (torch, torchvision, torch-fidelity, scikit-learn, ...), read from
pyproject.toml, in the driver and in every Ray worker it starts (they inherit PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BLOCKER = """\
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {blocked!r}


class NotOnAWorkerNode(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in vaegen[worker])")
        return None


sys.meta_path.insert(0, NotOnAWorkerNode())
"""


def _extra(project: dict, name: str | None) -> set[str]:
    """Distribution names an extra installs (None: the core), self-references resolved."""
    reqs = project["dependencies"] if name is None else project["optional-dependencies"][name]
    names: set[str] = set()
    for req in map(Requirement, reqs):
        if canonicalize_name(req.name) == "vaegen":
            for extra in req.extras:
                names |= _extra(project, extra)
        else:
            names.add(canonicalize_name(req.name))
    return names


def _modules_outside_the_worker_extra() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    worker = _extra(project, None) | _extra(project, "worker")
    others = (_extra(project, "train") | _extra(project, "eval")) - worker
    return {
        module
        for module, dists in packages_distributions().items()
        if any(canonicalize_name(d) in others for d in dists)
    }


def test_generate_runs_where_torch_cannot_be_imported(tmp_path: Path, make_decoder) -> None:  # noqa: ANN001
    blocked = _modules_outside_the_worker_extra()
    assert {"torch", "torchvision", "torch_fidelity", "sklearn", "matplotlib"} <= blocked
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(blocked)))
    env = {**os.environ, "PYTHONPATH": str(site), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True,
                           text=True)  # fmt: skip
    assert probe.returncode == 1 and "not in vaegen[worker]" in probe.stderr  # the block holds

    decoder = make_decoder(tmp_path / "cvae.onnx")
    out = tmp_path / "ds"
    cmd = [str(BIN / "vaegen"), "generate", str(decoder), "-n", "300", "--shard-size", "100",
           "--workers", "2", "--encoding", "png", "--out", str(out)]  # fmt: skip
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"generate still running after 300 s: {exc.stderr}")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 300
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [
        f"part-{i:05d}.parquet" for i in range(3)
    ]
