"""Wall-clock events of one `vaegen train`, from process start to exit: RUN/timeline.json.

The driver marks its own steps; rank 0 sends its steps in each epoch's metrics under
`TIMELINE_KEY`, which the driver moves here (train_log.jsonl keeps only the metrics).
bench/train.py prints the file as a table of steps and their durations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

TIMELINE_FILE = "timeline.json"
TIMELINE_KEY = "timeline"


def process_start() -> float:
    """When this process was created (seconds since the epoch), so imports count too."""
    import psutil

    return float(psutil.Process().create_time())


class Timeline:
    """Ordered (name, time) events; `save` writes them with offsets from the first."""

    def __init__(self, start: float | None = None) -> None:
        self.events: list[tuple[str, float]] = []
        self.mark("process start", process_start() if start is None else start)

    def mark(self, name: str, at: float | None = None) -> None:
        self.events.append((name, time.time() if at is None else at))

    def merge(self, prefix: str, events: dict[str, float]) -> None:
        for name, at in events.items():
            self.mark(f"{prefix}{name}", at)

    def to_dict(self) -> dict[str, Any]:
        start = self.events[0][1]
        ordered = sorted(self.events, key=lambda event: event[1])
        return {
            "start": start,
            "events": [{"name": n, "t": round(t - start, 3)} for n, t in ordered],
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def format_timeline(data: dict[str, Any], end: float | None = None) -> list[str]:
    """Lines `   t  +step  event` for a saved timeline; `end` (s from start) adds an exit line."""
    events = list(data["events"])
    if end is not None:
        events.append({"name": "process exit", "t": end})
    lines, previous = [], 0.0
    for event in events:
        lines.append(f"{event['t']:8.2f} s {event['t'] - previous:+7.2f}  {event['name']}")
        previous = event["t"]
    return lines


def controller_timeline_callback(queue: Any) -> Any:
    """A Ray Train callback (it runs in the controller) that sends the controller's and the
    worker group's steps to `queue` as `{TIMELINE_KEY: {step: time}}`."""
    from ray.train.v2._internal.execution.callback import (
        ControllerCallback,
        WorkerGroupCallback,
    )

    def send(step: str) -> None:
        queue.put({TIMELINE_KEY: {f"controller: {step}": time.time()}})

    class SendSteps(ControllerCallback, WorkerGroupCallback):
        def after_controller_start(self, train_run_context: Any) -> None:
            send("started")

        def before_worker_group_start(self, worker_group_context: Any) -> None:
            send("starting the worker group")

        def after_worker_group_start(self, worker_group: Any) -> None:
            send("worker group started (backend set up)")

        def before_worker_group_shutdown(self, worker_group: Any) -> None:
            send("training done, shutting the worker group down")

        def after_worker_group_shutdown(self, worker_group_context: Any) -> None:
            send("worker group shut down")

        async def before_controller_shutdown(self) -> None:
            send("controller shutting down")

    return SendSteps()
