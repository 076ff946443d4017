"""Progress display: a rich bar on a TTY, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class PlainProgress:
    """Logs a line at most every `interval` seconds, for CI logs and pipes."""

    def __init__(self, description: str, total: float | None, interval: float = 5.0) -> None:
        self.description = description
        self.total = total
        self.done = 0.0
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0

    def advance(self, amount: float = 1.0, info: str = "") -> None:
        self.done += amount
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total and self.done >= self.total):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            of = f"/{self.total:.0f}" if self.total else ""
            print(
                f"{self.description}: {self.done:.0f}{of} ({rate:,.3g}/s) {info}".rstrip(),
                file=sys.stderr,
                flush=True,
            )


class RichProgress:
    def __init__(self, progress, task) -> None:  # noqa: ANN001 - rich types stay lazy
        self._progress = progress
        self._task = task

    def advance(self, amount: float = 1.0, info: str = "") -> None:
        self._progress.update(self._task, advance=amount, info=info)


def _speed_column():  # noqa: ANN202 - rich types stay lazy
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        """Items per second; rich's TextColumn cannot format a speed that is still None."""

        def render(self, task):  # noqa: ANN001, ANN202
            return Text(f"{task.speed:,.1f}/s" if task.speed else "", style="cyan")

    return SpeedColumn()


@contextmanager
def progress(description: str, total: float | None) -> Iterator[PlainProgress | RichProgress]:
    if not sys.stderr.isatty():
        yield PlainProgress(description, total)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _speed_column(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, info="")
        yield RichProgress(bar, task)
