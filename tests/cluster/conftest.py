"""Real multi-node Ray clusters on this machine: `ray start --head` plus more `ray start`s."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayNodes:
    """One cluster's `ray start --block` processes; stopping one takes its node down."""

    def __init__(self) -> None:
        # One token shared by the nodes and the driver: Ray enables token auth by default, and
        # a token file another local Ray wrote in ~/.ray must not decide who may connect.
        self.token = secrets.token_hex(16)
        self.address = ""
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env.update(extra)
        return env

    def _start(self, args: list[str]) -> subprocess.Popen:
        # --block: the `ray start` process owns its raylet (and GCS), which die with it.
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_head(self, num_cpus: int) -> str:
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self._start(["--head", f"--port={port}", f"--num-cpus={num_cpus}",
                     "--include-dashboard=false"])  # fmt: skip
        self.wait_for_nodes(1)
        return self.address

    def add_node(self, *args: str) -> subprocess.Popen:
        alive = self.count_nodes()
        proc = self._start([f"--address={self.address}", *args])
        self.wait_for_nodes(alive + 1)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
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

    def count_nodes(self) -> int:
        script = (
            "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, self.address],
            env=self.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        last = out.stdout.strip().splitlines()[-1:] if out.returncode == 0 else []
        return int(last[0]) if last and last[0].isdigit() else -1

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_nodes() == count:
                return
            time.sleep(1)
        raise AssertionError(f"cluster at {self.address} never reached {count} nodes")

    def generate(
        self, decoder: Path, out: Path, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """`vaegen generate` of 4000 samples in 16 shards on this cluster, started."""
        return subprocess.Popen(
            [str(BIN / "vaegen"), "generate", str(decoder), "--num-samples", "4000",
             "--shard-size", "250", "--batch-size", "250", "--ray-address", self.address,
             "--out", str(out), *extra],
            env=self.env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    @staticmethod
    def wait_for_shards(
        out: Path, proc: subprocess.Popen, done: Callable[[list[dict]], bool], timeout: float = 180
    ) -> list[dict]:
        """Poll `out`'s manifest until `done(shards)` holds; a job that ends first fails."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                shards = json.loads((out / "manifest.json").read_text())["shards"]
            except (OSError, ValueError, KeyError):
                shards = []
            if done(shards):
                return shards
            if proc.poll() is not None:
                raise AssertionError(f"generate ended first: {proc.communicate()[1][-3000:]}")
            time.sleep(0.1)
        proc.kill()
        raise AssertionError(f"{out}: the shards never got there in {timeout} s")

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
        """(exit code, stderr) of a `generate`; a job still running at `timeout` is killed."""
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: the driver's Ray handles SIGTERM and can hang in it
            _, stderr = proc.communicate()
            raise AssertionError(
                f"generate still running after {timeout} s: {stderr[-3000:]}"
            ) from None
        return proc.returncode, stderr

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    nodes = RayNodes()
    try:
        yield nodes
    finally:
        nodes.close()


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
