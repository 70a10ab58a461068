"""Executions in a pool of worker processes on this machine (`mmlab run --executor local`)."""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor

from mmlab.batch.job import Job, Outcome, safe_execute


def _ignore_sigint() -> None:
    # Ctrl-C is the runner's to handle: it marks runs KILLED and stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """A pool of `jobs` worker processes on this machine (spawned: no forked MLflow state).
    A stage's `resources` are not enforced here: `--jobs` executions run at a time."""

    description = "local processes"

    def __init__(self, jobs: int):
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            max_workers=max(1, jobs), mp_context=context, initializer=_ignore_sigint
        )

    def submit(self, job: Job) -> Future[Outcome]:
        return self.pool.submit(safe_execute, job)

    def shutdown(self, wait: bool = True) -> None:
        if not wait:
            # A worker that dies takes its kernel along: ipykernel exits when its parent goes.
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=wait, cancel_futures=True)
