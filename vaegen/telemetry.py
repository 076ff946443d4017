"""Prometheus metrics, named as in DESIGN.md, on one registry of our own.

A private registry keeps the exported set exactly ours (no process/GC collectors mixed in), so the
Grafana check can compare panel queries against `METRIC_NAMES`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GENERATED_SAMPLES = Counter(
    "vaegen_generated_samples",
    "Synthetic samples written, by class label.",
    ["label"],
    registry=REGISTRY,
)
GENERATE_BATCH_SECONDS = Histogram(
    "vaegen_generate_batch_seconds",
    "Wall time of one decoder batch (or one shard's batches, per batch).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
GENERATE_SHARDS = Counter(
    "vaegen_generate_shards",
    "Shards finished, by status (written, skipped, failed).",
    ["status"],
    registry=REGISTRY,
)
GENERATE_SAMPLES_PER_SECOND = Gauge(
    "vaegen_generate_samples_per_second",
    "Generation throughput over the job so far.",
    registry=REGISTRY,
)
TRAIN_EPOCH_SECONDS = Histogram(
    "vaegen_train_epoch_seconds",
    "Wall time of one training epoch.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
TRAIN_LOSS = Gauge(
    "vaegen_train_loss",
    "Latest per-sample loss terms (nats), by term.",
    ["term"],
    registry=REGISTRY,
)
EVAL_SECONDS = Histogram(
    "vaegen_eval_seconds",
    "Wall time of one eval metric.",
    ["metric"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)

# Names as Prometheus exposes them (counters gain `_total`, histograms `_bucket/_sum/_count`).
METRIC_NAMES: frozenset[str] = frozenset(
    {
        "vaegen_generated_samples_total",
        "vaegen_generate_batch_seconds",
        "vaegen_generate_shards_total",
        "vaegen_generate_samples_per_second",
        "vaegen_train_epoch_seconds",
        "vaegen_train_loss",
        "vaegen_eval_seconds",
    }
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> object:
    """Serve REGISTRY over HTTP in a daemon thread; returns the server (call .shutdown())."""
    from prometheus_client import start_http_server

    from vaegen.errors import VaegenError

    try:
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise VaegenError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return server


def push_metrics(gateway: str, job: str, grouping_key: dict[str, str] | None = None) -> None:
    """Push the registry's current values to a Pushgateway (final totals of a batch job)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=job, registry=REGISTRY, grouping_key=grouping_key or {})
