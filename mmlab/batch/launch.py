"""Run a batch file: load and check it, run its stages through the runner, then its search
stages through `mmlab.batch.tune` (which builds on the runner, so this module sits above both)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mmlab import tracking
from mmlab.batch import config, tune
from mmlab.batch import view as batch_view
from mmlab.batch.runner import BatchRun, Report, Result, plan, select, server_stopped, summary
from mmlab.batch.view import Print


def run(
    path: str | Path,
    *,
    jobs: int | None = None,
    only: list[str] = (),
    overrides: list[str] = (),
    force: bool = False,
    dry_run: bool = False,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    out: Print = print,
    progress_every: float = 30.0,
    trials: int | None = None,
) -> Report | None:
    """Load, check and run a batch file; the report (None for a dry run). Progress shows in a
    live table on a terminal, else as lines every `progress_every` s. Stages with a `search:`
    block run after the others (`mmlab.batch.tune`; `trials` overrides their budget). Raises
    BatchError before anything runs, and executors.ExecutorError for an executor that cannot
    start."""
    batch = config.load(path, list(overrides))
    jobs = jobs or os.cpu_count() or 1
    if dry_run:
        plan(batch, list(only), out, trials)
        return None
    chosen = select(batch, list(only))
    searches = [s for s in batch.stages if s in batch.searches and s in chosen]
    if searches:
        tune.require()  # before the first execution, not after the stages a search needs
    interactive = out is print and sys.stdout.isatty()
    view = batch_view.LiveView() if interactive else batch_view.PlainView(out, progress_every)
    batch_run = BatchRun(batch, jobs, list(only), force, executor, out, view, executor_options)
    view.line(
        f"batch {batch.name!r} ({batch_run.batch_id}): {len(batch_run.results)} executions"
        f"{f' and {len(searches)} searches' if searches else ''}, {jobs} jobs, tracking "
        f"{tracking.tracking_uri()}"
    )
    try:
        report = batch_run.run() if batch_run.results else Report(batch, batch_run.batch_id)
        for stage in searches:
            if report.lost:
                break
            failed = [n for n in batch.needs[stage] if n not in batch_run.run_ids()]
            if failed:
                view.line(
                    f"search {stage!r} not started: it needs {', '.join(failed)}, which failed"
                )
                error = f"needs {failed[0]!r}, which failed"
                report.results.append(Result(batch.stages[stage][0], "skipped", error=error))
                continue
            found = tune.search(
                batch,
                stage,
                jobs=jobs,
                trials=trials,
                executor=executor,
                executor_options=executor_options,
                out=out,
                view=view,
                upstream=batch_run.run_ids(),
            )
            report.searches.append(found)
            report.results += found.results
    finally:
        view.close()
    for line in summary(report) + [n for found in report.searches for n in tune.summary(found)]:
        out(line)
    if report.lost:
        unfinished = sum(not r.ok for r in report.results)
        out(
            f"{server_stopped(report.lost)}: {unfinished} executions did not "
            f"finish. Start it again (`make server`, or ask whoever runs it) and rerun the "
            f"same command: executions FINISHED in its store are taken from the cache, the "
            f"rest run again."
        )
    sys.stdout.flush()
    return report
