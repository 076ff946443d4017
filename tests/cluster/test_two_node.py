"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start`.

`vaegen generate --ray-address` must use both nodes, and the manifest must say which node wrote
each shard.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# One token shared by both nodes and the driver: Ray enables token auth by default, and a
# token file another local Ray wrote in ~/.ray must not decide who may connect.
_TOKEN = secrets.token_hex(16)


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN)
    return env


def _start(args: list[str]) -> subprocess.Popen:
    # --block: the `ray start` process owns its raylet/GCS, and they die with it.
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
        env=_ray_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=15)
    for p in alive:
        p.kill()


def _wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    script = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", script, address],
            env=_ray_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"cluster at {address} never reached {count} nodes")


@pytest.fixture()
def decoder(tmp_path: Path) -> Path:
    from exporter.export import export_decoder
    from trainer.checkpoint import save_model
    from trainer.config import ModelConfig
    from trainer.models import build_model

    model = build_model(ModelConfig(model="cvae", hidden_dims=(32,)))
    dataset = {"name": "digits", "image_shape": [1, 8, 8], "class_names": list("0123456789")}
    save_model(tmp_path / "run" / "model", model, dataset, {}, {})
    return export_decoder(tmp_path / "run").path


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head node (1 CPU) and a worker node (1 CPU, and 1 GPU as a resource label only)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"])
    worker = None
    try:
        _wait_for_nodes(address, 1)
        # The GPU is declared, not real: its actors find no CUDA provider, as on a node whose
        # onnxruntime is the CPU build.
        worker = _start([f"--address={address}", "--num-cpus=1", "--num-gpus=1"])
        _wait_for_nodes(address, 2)
        yield address
    finally:
        if worker is not None:
            _stop(worker)
        _stop(head)


def _generate(decoder: Path, address: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "vaegen"), "generate", str(decoder), "--num-samples", "4000",
         "--shard-size", "250", "--batch-size", "250", "--ray-address", address,
         "--out", str(out), *extra],
        env=_ray_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_generate_spreads_over_two_nodes(cluster: str, tmp_path: Path, decoder: Path) -> None:
    out = tmp_path / "dataset"
    proc = _generate(decoder, cluster, out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["shards"]
    assert sum(s["rows"] for s in shards) == 4000
    nodes = {s["node"]["node_id"] for s in shards}
    assert len(nodes) == 2, nodes


def test_gpu_actor_without_cuda_provider_exits_2(
    cluster: str, tmp_path: Path, decoder: Path
) -> None:
    # The driver cannot check a remote node's onnxruntime: the actor must refuse, never
    # fall back to the CPU provider, and the driver must turn that into exit 2.
    out = tmp_path / "dataset"
    proc = _generate(decoder, cluster, out, "--gpus-per-worker", "1")
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-3000:])
    [line] = proc.stderr.strip().splitlines()  # one line: no traceback, no Ray log noise
    assert line.startswith("error: --gpus-per-worker:") and "CUDAExecutionProvider" in line
    assert not list(out.glob("part-*"))
