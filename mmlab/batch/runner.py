"""Run a batch: executions in dependency order, in parallel, resumable, failures contained.
Per execution the runner creates the MLflow run (batch, stage, commit, parameter and code
hashes), passes it to the kernel through the environment and sets its final status. A FINISHED
run with the same `resume_key` stands in for it, so an interrupted batch resumes; a claimed
output (`workspace.claim`) makes a second runner wait, then take that run from the cache.
Search stages (`mmlab.batch.tune`) run after the others, by `mmlab.batch.launch.run`."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunTag

from mmlab import tracking
from mmlab.batch import config, executors, resume_keys
from mmlab.batch import view as batch_view
from mmlab.batch.config import Batch, BatchError, Execution
from mmlab.batch.view import Print
from mmlab.core import parameters_cell, progress, workspace


@dataclass
class Result:
    execution: Execution
    status: str = "pending"  # pending, cached, running, done, failed, skipped
    run_id: str = ""
    error: str = ""
    seconds: float = 0.0
    kernel_seconds: float = 0.0
    headline: str = ""
    started: float = 0.0
    looked_up: bool = False  # the cache was searched (and missed) for this execution
    waited: str = ""  # who held its output when it was ready (another runner), if anyone
    claim: Any = None  # this runner's lock on the output while the execution runs
    progress: Path | None = None  # folder of its progress records while it runs
    trial: Any = None  # the Optuna trial a search's execution runs (`mmlab.batch.tune`)
    pruned: int | None = None  # the step at which the search's pruner stopped it

    @property
    def ok(self) -> bool:
        return self.status in ("done", "cached")


@dataclass
class Report:
    batch: Batch
    batch_id: str
    results: list[Result] = field(default_factory=list)
    lost: str = ""  # why the tracking server stopped answering during the batch, if it did
    searches: list[Any] = field(default_factory=list)  # `tune.SearchReport`s of search stages

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def by_label(self) -> dict[str, Result]:
        return {r.execution.label: r for r in self.results}


@cache
def source_hash() -> str:
    """A hash of the mmlab package's Python source: code changes invalidate cached runs."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_hash(notebook: Path) -> str:
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(source_hash().encode())
    return digest.hexdigest()[:16]


def git_state(folder: Path) -> tuple[str, bool]:
    """(commit, dirty) of the repository holding `folder`; ("unknown", False) outside git."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(workspace.root()))
    except ValueError:
        return str(path)


def output_path(batch: Batch, execution: Execution) -> Path:
    stem = execution.notebook.stem if execution.name == execution.stage else execution.name
    return workspace.runs_dir() / batch.name / execution.stage / f"{stem}.ipynb"


def resume_key(execution: Execution, params: dict[str, Any]) -> dict[str, str]:
    """The tags a FINISHED run must carry to stand in for this execution (the cache key)."""
    # what `dataset` and `model` stand for now (content fingerprint, resolved URI) is keyed too
    keyed = {**params, **resume_keys.content_keys(params)}
    return {
        "mmlab.params_hash": config.parameter_hash(keyed),
        "mmlab.code_hash": code_hash(execution.notebook),
    }


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log `params` (flattened) to the run, 100 a call: MLflow takes no more at once."""
    items = [Param(k, v) for k, v in tracking.flatten(params).items()]
    for i in range(0, len(items), 100):
        tracking.retry(client.log_batch, run_id, params=items[i : i + 100])


def find_cached(experiment: str, key: dict[str, str]) -> str | None:
    """The newest FINISHED run of this notebook with this resume key."""
    client = tracking.client()
    tags = " and ".join(f"tags.`{name}` = '{value}'" for name, value in key.items())
    found = tracking.retry(
        client.search_runs,
        [experiment],
        filter_string=f"{tags} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def headline_of(run_id: str) -> str:
    run = tracking.retry(tracking.client().get_run, run_id)
    metric = run.data.tags.get(tracking.HEADLINE_TAG)
    if not metric or metric not in run.data.metrics:
        return ""
    return f"{metric}={run.data.metrics[metric]:.4g}"


def select(batch: Batch, only: list[str]) -> set[str]:
    """The stages to consider: `only` and every stage they need (taken from cache if possible)."""
    if not only:
        return set(batch.stages)
    unknown = [s for s in only if s not in batch.stages]
    if unknown:
        raise BatchError(
            f"{batch.path}: --only {', '.join(unknown)}: unknown stage "
            f"(stages: {', '.join(batch.stages)})"
        )
    chosen: set[str] = set()
    todo = list(only)
    while todo:
        stage = todo.pop()
        if stage not in chosen:
            chosen.add(stage)
            todo.extend(batch.needs[stage])
    return chosen


def server_stopped(lost: str) -> str:
    reason = tracking.why_unreachable(lost)
    return f"the tracking server {tracking.tracking_uri()} stopped answering" + (
        f" ({reason})" if reason else ""
    )


class BatchRun:
    """One invocation of a batch: the scheduling loop and its bookkeeping."""

    def __init__(
        self,
        batch: Batch,
        jobs: int,
        only: list[str],
        force: bool,
        executor: str,
        out: Print,
        view: batch_view.PlainView | batch_view.LiveView | None = None,
        executor_options: dict[str, Any] | None = None,
    ):
        self.batch, self.jobs, self.force, self.out = batch, jobs, force, out
        self.executor_name = executor
        self.executor_options = executor_options or {}
        self.view = view or batch_view.PlainView(out)
        self.stages = select(batch, only)
        self.forced = set(only) if only else set(batch.stages)
        self.batch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.owner = f"pid {os.getpid()} on {socket.gethostname()}, batch {self.batch_id}"
        self.results = [Result(e) for e in batch.executions if e.stage in self.stages]
        self.upstream: dict[str, str] = {}  # run ids of stages settled before this run
        self.commit, self.dirty = git_state(batch.path.parent.resolve())
        self.started = time.perf_counter()
        self.lost = ""  # what the tracking server said when it stopped answering, if it did

    def stage_results(self, stage: str) -> list[Result]:
        return [r for r in self.results if r.execution.stage == stage]

    def run_ids(self) -> dict[str, str]:
        return {**self.upstream, **{r.execution.stage: r.run_id for r in self.results if r.ok}}

    def output(self, execution: Execution) -> Path:
        return output_path(self.batch, execution)

    def show(self, result: Result, status: str = "") -> None:
        total = max(len(self.results), self.width())
        index = self.results.index(result) + 1
        status = status or result.status
        clock = f"{result.seconds:7.1f}s" if status in ("done", "failed") else " " * 8
        extra = result.error or result.headline
        if status == "waiting":
            extra = f"{relative(self.output(result.execution))} is held by {result.waited}"
        line = f"[{index:>{len(str(total))}}/{total}] {status:<8}{clock}  {result.execution.label}"
        self.view.line(f"{line}  {extra}".rstrip())

    def blocked_by(self, result: Result) -> str | None:
        """A needed stage that failed (or was skipped), or None."""
        for need in result.execution.needs:
            if any(r.status in ("failed", "skipped") for r in self.stage_results(need)):
                return need
        return None

    def ready(self, result: Result) -> bool:
        return all(r.ok for need in result.execution.needs for r in self.stage_results(need))

    def identity(self, result: Result) -> tuple[dict, dict[str, str], str]:
        """(resolved parameters, resume key, experiment id) of an execution."""
        execution = result.execution
        params = execution.resolve(self.run_ids())
        experiment = tracking.experiment_id(execution.notebook.stem)
        return params, resume_key(execution, params), experiment

    def reuse(self, result: Result) -> bool:
        """Settle the execution as cached if a FINISHED run has its resume key."""
        if result.looked_up or (self.force and result.execution.stage in self.forced):
            return False
        result.looked_up = True
        _, key, experiment = self.identity(result)
        cached = find_cached(experiment, key)
        if cached:
            result.status, result.run_id = "cached", cached
            result.headline = headline_of(cached)
        return bool(cached)

    def take_output(self, result: Result) -> bool:
        """Claim the execution's output; False while another runner holds it, or when the cache,
        searched again under the claim, now has it."""
        output = self.output(result.execution)
        result.claim = workspace.claim(output, self.owner)
        if result.claim is None:
            if not result.waited:
                result.waited = workspace.claimant(output)
                self.show(result, "waiting")
            return False
        result.looked_up = False
        if self.reuse(result):
            self.release(result)
            return False
        return True

    def release(self, result: Result) -> None:
        if result.claim is not None:
            result.claim.release()
            result.claim = None
        if result.progress is not None:
            shutil.rmtree(result.progress, ignore_errors=True)
            result.progress = None

    def prepare(self, result: Result) -> executors.Job:
        """Create the execution's MLflow run and the job that runs its notebook."""
        execution = result.execution
        params, key, experiment = self.identity(result)
        output = self.output(execution)
        tags = {
            **self.base_tags(execution),
            "mmlab.execution": execution.name,
            "mmlab.output": relative(output),
            "mmlab.git_dirty": str(self.dirty).lower(),
            **key,
            "mlflow.source.git.commit": self.commit,
            **self.run_tags(result),
        }
        client = tracking.client()
        run = tracking.retry(client.create_run, experiment, run_name=execution.label, tags=tags)
        result.run_id = run.info.run_id
        # every parameter the kernel will see: the cell's defaults under the resolved ones
        logged = {**parameters_cell.defaults(execution.notebook), **params}
        log_params(client, run.info.run_id, logged)
        result.progress = Path(tempfile.mkdtemp(prefix="mmlab-progress-"))
        # the cores are shared by the kernels that can run at once: never more than there are
        threads = str(max(1, (os.cpu_count() or 1) // max(1, min(self.jobs, self.width()))))
        env = {
            "MLFLOW_RUN_ID": run.info.run_id,
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
            "MLFLOW_EXPERIMENT_NAME": execution.notebook.stem,
            "MMLAB_HOME": str(workspace.root()),
            "MMLAB_NOTEBOOK_PATH": str(execution.notebook),
            progress.ENV: str(result.progress),
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }
        return executors.Job(
            execution.notebook,
            output,
            params,
            env,
            run.info.run_id,
            tracking.tracking_uri(),
            execution.timeout,
            execution.resources,
        )

    def base_tags(self, execution: Execution) -> dict[str, str]:
        """The tags of every run this batch creates (an execution's, a search's parent)."""
        return {
            "mmlab.batch": self.batch.name,
            "mmlab.batch_id": self.batch_id,
            "mmlab.stage": execution.stage,
            tracking.NOTEBOOK_TAG: execution.notebook.stem,
            "mmlab.notebook_path": relative(execution.notebook),
            "mmlab.git_commit": self.commit,
            "mlflow.source.name": relative(execution.notebook),
        }

    def width(self) -> int:
        """Executions this run may hold at once, at most (with `--jobs`, the kernels' threads)."""
        return len(self.results)

    def run_tags(self, result: Result) -> dict[str, str]:
        """More tags for the execution's run (a search's trials: their parent, their trial)."""
        return {}

    def lose_server(self, error: BaseException | str) -> None:
        """The tracking server stopped answering: start nothing more; what runs is recorded if it returns."""
        if not self.lost:
            self.lost = str(error).strip() or "no answer"
            self.view.line(f"{server_stopped(self.lost)}: no new executions start")
        for result in self.results:
            if result.status == "pending":
                result.status, result.error = "skipped", "not started: no tracking server"
                self.show(result)

    def finish(self, result: Result, outcome: executors.Outcome) -> None:
        """Set the run's final status: FINISHED only if it succeeded and the store took everything
        (without a server, never: the execution counts as failed)."""
        if tracking.unreachable(outcome.error):
            self.lose_server(outcome.error)
        try:
            if self.lost and not tracking.answers():  # one quick look, not MLflow's retries
                raise tracking.TrackingServerError(self.lost)
            self.record(result, outcome)
        except Exception as error:
            if not (isinstance(error, tracking.TrackingServerError) or tracking.unreachable(error)):
                raise
            self.lose_server(error)
            result.status, result.seconds = "failed", outcome.seconds
            result.error = "not recorded: the tracking server does not answer"
            self.release(result)

    def record(self, result: Result, outcome: executors.Outcome) -> None:
        result.status = "done" if outcome.ok else "failed"
        result.error, result.seconds = outcome.error, outcome.seconds
        result.kernel_seconds = outcome.kernel_seconds
        if tracking.unreachable(outcome.error):
            result.error = "the tracking server stopped answering during the run"
        client = tracking.client()
        if outcome.error:
            tag = RunTag("mmlab.error", outcome.error[:5000])
            tracking.retry(client.log_batch, result.run_id, tags=[tag])
        status = "FINISHED" if outcome.ok else "FAILED"
        tracking.retry(client.set_terminated, result.run_id, status)
        # only now, with the run's status final, may a waiting runner look at the cache
        self.release(result)
        if outcome.ok:
            result.headline = headline_of(result.run_id)

    TICK = 1.0  # seconds between looks at progress and at outputs other runners hold

    def run(self) -> Report:
        tracking.ensure_store()
        executor = executors.create(self.executor_name, self.jobs, **self.executor_options)
        self.view.line(f"executions run on {executor.description}")
        running: dict[Future, Result] = {}
        try:
            while True:
                try:
                    if not self.lost:
                        self.schedule(executor, running)
                except Exception as error:
                    if not tracking.unreachable(error):
                        raise
                    self.lose_server(error)
                waiting = any(r.status == "pending" and r.waited for r in self.results)
                if not running and not waiting:
                    break
                if running:
                    done, _ = wait(list(running), self.TICK, return_when=FIRST_COMPLETED)
                else:
                    done = set()
                    time.sleep(self.TICK)
                for future in done:
                    result = running.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as error:  # the worker process itself died
                        outcome = executors.Outcome(ok=False, error=f"worker died: {error!r}")
                    self.finish(result, outcome)
                    self.show(result)
                live = [r for r in running.values() if r.progress is not None]
                self.view.tick(
                    [batch_view.Running(r.execution.label, r.started, r.progress) for r in live]
                )
        except BaseException:  # Ctrl-C, SIGTERM: stop the kernels, leave no RUNNING runs
            executor.shutdown(wait=False)
            for result in running.values():
                if not self.lost or tracking.answers():
                    tracking.retry(tracking.client().set_terminated, result.run_id, "KILLED")
                result.status, result.error = "failed", "interrupted"
                self.release(result)
            self.view.line(f"interrupted: {len(running)} running executions marked KILLED")
            raise
        finally:
            for result in self.results:
                self.release(result)
        executor.shutdown()
        return Report(self.batch, self.batch_id, self.results, self.lost)

    def schedule(self, executor: executors.Executor, running: dict[Future, Result]) -> None:
        """Settle what can be settled now (skipped, cached) and submit what is ready."""
        progress = True
        while progress:
            progress = False
            for result in self.results:
                if result.status != "pending":
                    continue
                blocker = self.blocked_by(result)
                if blocker:
                    result.status, result.error = "skipped", f"needs {blocker!r}, which failed"
                    self.show(result)
                    progress = True
                elif not self.ready(result):
                    continue
                elif self.reuse(result):
                    self.show(result)
                    progress = True
                elif len(running) < self.jobs:
                    if not self.take_output(result):
                        if result.status == "cached":  # the other runner finished it for us
                            self.show(result)
                            progress = True
                        continue
                    job = self.prepare(result)
                    result.status, result.started = "running", time.perf_counter()
                    running[executor.submit(job)] = result
                    self.show(result)


def plan(batch: Batch, only: list[str] = (), out: Print = print, trials: int | None = None) -> None:
    """Print the expanded plan: every execution with its parameters and output."""
    stages = select(batch, list(only))
    searches = f" and {len(batch.searches)} searches" if batch.searches else ""
    out(f"batch {batch.name!r} from {batch.path}: {len(batch.executions)} executions{searches}")
    for stage, runs in batch.stages.items():
        if stage not in stages:
            continue
        needs = f"  (needs {', '.join(batch.needs[stage])})" if batch.needs[stage] else ""
        out(f"{stage}: {relative(runs[0].notebook)}{needs}")
        search = batch.searches.get(stage)
        if search is not None:
            pruner = search.pruner
            pruning = (
                f", {pruner.name} pruner on {pruner.metric}" if pruner and pruner.metric else ""
            )
            out(
                f"  search: {trials or search.trials} trials, {search.direction} "
                f"{search.metric}, {search.sampler.name} sampler (seed {search.sampler.seed})"
                f"{pruning}"
            )
            for key, space in search.parameters.items():
                out(f"      {key}: {space.model_dump(exclude_defaults=True)}")
        for execution in runs:
            params = " ".join(f"{k}={v!r}" for k, v in execution.parameters.items())
            target = output_path(batch, execution)
            if search is not None:
                target = target.parent / "search-HASH" / "trial-NNN.ipynb"
            label = "trials" if search is not None else execution.label
            out(f"  {label:<30} -> {relative(target)}")
            if params:
                out(f"      {params}")


def summary(report: Report) -> list[str]:
    """The end-of-batch table: stage, notebook, varying parameters, status, time, run, headline."""
    header = ("stage", "notebook", "parameters", "status", "time", "mlflow run", "headline / error")
    rows = [header]
    for r in report.results:
        varying = report.batch.varying(r.execution.stage)
        params = ",".join(f"{k}={r.execution.parameters[k]}" for k in varying) or "-"
        if r.trial is not None:  # a search's trial: the values it was asked to try
            params = ",".join(f"{k}={_short(v)}" for k, v in r.trial.params.items())
        duration = f"{r.seconds:.1f}s" if r.status in ("done", "failed") else "-"
        row = (r.execution.stage, r.execution.notebook.stem, params, r.status, duration)
        rows.append((*row, r.run_id or "-", r.error or r.headline))
    last = len(header) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:last], widths, strict=True)) + "  " + row[last]
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return [line.rstrip() for line in lines]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
