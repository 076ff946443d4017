"""A real Prometheus scrapes --metrics-port during a job; a real Pushgateway gets the totals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vaegen.dataset_format import MANIFEST
from workers.job import SHARD_GATE_ENV

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
N = 600


def _need(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{binary} is missing (apt-get install prometheus prometheus-pushgateway)")
        pytest.skip(f"{binary} is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - localhost only
        return resp.read().decode()


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited: {proc.communicate()}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not ready")


def _start(cmd: list[str], ready_url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_ready(ready_url, proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def pushgateway() -> Iterator[str]:
    _need(PUSHGATEWAY)
    port = _free_port()
    # Debian's build persists to a shared /var/lib file by default: keep ours in memory.
    cmd = [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    proc = _start(cmd, f"http://127.0.0.1:{port}/-/ready")
    yield f"127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(Prometheus URL, the port it scrapes every second)."""
    _need(PROMETHEUS)
    target, port = _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: vaegen\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target}']\n"
    )
    proc = _start(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        f"http://127.0.0.1:{port}/-/ready",
    )
    yield f"http://127.0.0.1:{port}", target
    _stop(proc)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _query(prom: str, expr: str) -> float | None:
    body = json.loads(
        _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=10)
    )
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _poll(prom: str, expr: str) -> float | None:
    """_query, but a slow answer (2 busy cores while the job starts Ray) is just "not yet"."""
    try:
        return _query(prom, expr)
    except OSError:
        return None


@pytest.mark.slow
def test_prometheus_scrapes_and_pushgateway_gets_totals(
    prometheus: tuple[str, int], pushgateway: str, cvae_onnx: Path, tmp_path: Path
) -> None:
    prom, target = prometheus
    out = tmp_path / "ds"
    # Each actor writes one shard, then waits at the gate until Prometheus has seen the partial
    # total: a scrape while the job runs, whatever the load.
    gate = tmp_path / "gate"
    env = {**os.environ, SHARD_GATE_ENV: str(gate), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "workers", str(cvae_onnx), "-n", str(N), "--class-counts",
           "1=100,2=500", "--shard-size", "100", "--workers", "2", "--out", str(out),
           "--metrics-port", str(target), "--pushgateway", pushgateway,
           "--metrics-linger", "60"]  # fmt: skip
    # To a file, not a pipe: nobody reads a pipe while the job runs, and a full one blocks it.
    log = tmp_path / "job.log"
    with open(log, "wb") as sink:
        job = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Ctrl-C must reach the job even when this run inherited an ignored SIGINT (`cmd &`).
            preexec_fn=_default_sigint,
        )
    try:
        # Two shards of 100, one per actor, held there: Prometheus saw the job mid-way.
        _wait_for_total(prom, job, log, lambda total: total == 200)
        gate.touch()
        assert _wait_for_total(prom, job, log, lambda total: total == N) == N
        manifest = json.loads((out / MANIFEST).read_text())
        assert manifest["complete"] and manifest["num_rows"] == N
        assert _query(prom, 'vaegen_generated_samples_total{label="2"}') == 500
        assert _query(prom, 'vaegen_generate_shards_total{status="written"}') == 6
        assert _query(prom, "vaegen_generate_batch_seconds_count") == 6  # one batch per shard
        assert _query(prom, "vaegen_generate_samples_per_second") > 0
        # The final totals were pushed before the linger began.
        pushed = _get(f"http://{pushgateway}/metrics")
        samples = [
            line
            for line in pushed.splitlines()
            if line.startswith("vaegen_generated_samples_total")
        ]
        assert 'job="vaegen_generate"' in samples[0]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in samples) == N
    finally:
        # Ctrl-C ends the linger; the driver then shuts its local Ray down cleanly.
        tree = psutil.Process(job.pid).children(recursive=True) if job.poll() is None else []
        if job.poll() is None:
            job.send_signal(signal.SIGINT)
        # Cleanup only: a slow exit must not hide the assertion that brought us here.
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.wait(timeout=60)
        for child in [job, *tree]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                child.kill()
        psutil.wait_procs(tree, timeout=30)
        print(f"job output:\n{log.read_text()[-3000:]}")  # shown by pytest if the test failed


def _wait_for_total(prom: str, job: subprocess.Popen, log: Path, done) -> float:  # noqa: ANN001
    """The scraped sum of vaegen_generated_samples_total, once `done(total)` holds."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if job.poll() is not None:
            raise AssertionError(f"job ended before the check: {log.read_text()[-3000:]}")
        total = _poll(prom, "sum(vaegen_generated_samples_total)")
        if total is not None and done(total):
            return total
        time.sleep(0.5)
    raise AssertionError("Prometheus never scraped the total the test waits for")
