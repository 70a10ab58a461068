"""Progress records: what an execution is doing now, for the batch runner to show.
Under the runner `MMLAB_PROGRESS_DIR` names the execution's folder: the executor writes the
current cell, training loops their latest epoch (`EpochBar`), each process its own file,
atomically. Outside the runner nothing is written."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmlab.core import workspace

ENV = "MMLAB_PROGRESS_DIR"


def report(kind: str, **fields: Any) -> None:
    """Write this process's latest `kind` record ("cell", "epoch") if the runner asked for it."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    record = {"kind": kind, "time": time.time(), **fields}
    try:
        with workspace.atomic_path(Path(folder) / f"{kind}-{os.getpid()}.json") as tmp:
            tmp.write_text(json.dumps(record, default=float))
    except OSError:  # the runner cleared the folder as the execution ended: nothing to show
        pass


@dataclass
class Snapshot:
    """The newest cell and epoch records of one execution."""

    cell: dict[str, Any] = field(default_factory=dict)
    epoch: dict[str, Any] = field(default_factory=dict)

    def cell_text(self) -> str:
        return f"cell {self.cell['cell']}/{self.cell['cells']}" if self.cell else ""

    def epoch_text(self) -> str:
        if not self.epoch:
            return ""
        what = f"{self.epoch['desc']} " if self.epoch.get("desc") else ""
        values = " ".join(f"{k} {v:.4g}" for k, v in self.epoch.get("metrics", {}).items())
        return f"{what}epoch {self.epoch['epoch']}/{self.epoch['epochs']} {values}".strip()

    def describe(self) -> str:
        return ", ".join(p for p in (self.cell_text(), self.epoch_text()) if p)


def read(folder: Path) -> Snapshot:
    """The newest record of each kind in `folder` (a missing or half-read file is skipped)."""
    newest: dict[str, dict[str, Any]] = {}
    for path in Path(folder).glob("*-*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        kind = record.get("kind")
        if kind and record.get("time", 0) >= newest.get(kind, {}).get("time", 0):
            newest[kind] = record
    return Snapshot(newest.get("cell", {}), newest.get("epoch", {}))


class EpochBar:
    """An epoch bar for a training loop: a tqdm.auto bar of the given metrics and a progress record."""

    def __init__(self, total: int, desc: str = ""):
        from tqdm.auto import tqdm

        self.total, self.desc, self.done = total, desc, 0
        # Spawned training workers would draw into the kernel's log, where nobody sees it.
        shown = multiprocessing.parent_process() is None
        self.bar = tqdm(total=total, desc=desc, unit="epoch", leave=True, disable=not shown)

    def update(self, metrics: dict[str, float]) -> None:
        self.done += 1
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
        self.bar.update(1)
        report("epoch", desc=self.desc, epoch=self.done, epochs=self.total, metrics=metrics)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
