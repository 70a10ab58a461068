"""What the batch runner shows while executions run: a live table on a terminal, plain lines
in a log (CI), both with each running execution's current cell and latest training epoch
(read from its `mmlab.core.progress` records)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmlab.core import progress

Print = Callable[[str], None]


@dataclass
class Running:
    """A running execution as the view sees it."""

    label: str
    started: float  # time.perf_counter() when it was submitted
    folder: Path  # its progress records


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class PlainView:
    """Lines for logs: every `every` seconds, one line per running execution."""

    def __init__(self, out: Print, every: float = 30.0):
        self.out, self.every = out, every
        self.last = time.perf_counter()

    def line(self, text: str) -> None:
        self.out(text)

    def tick(self, running: list[Running]) -> None:
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        for r in running:
            doing = progress.read(r.folder).describe() or "starting"
            self.out(f"  ... {r.label} {clock(now - r.started)}: {doing}")

    def close(self) -> None:
        pass


class LiveView:
    """A `rich` live table under the finished executions' lines, redrawn at every tick."""

    def __init__(self):
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self.live.start()

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def tick(self, running: list[Running]) -> None:
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("running", "time", "cell", "training"):
            table.add_column(column, no_wrap=column != "training")
        now = time.perf_counter()
        for r in running:
            snapshot = progress.read(r.folder)
            cell = snapshot.cell_text().removeprefix("cell ") or "-"
            table.add_row(r.label, clock(now - r.started), cell, snapshot.epoch_text() or "-")
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()
