"""Search a stage's notebook parameters with Optuna (`mmlab tune BATCH STAGE`, or `mmlab run`
for a stage with a `search:` block), by its ask-and-tell interface: this process asks the study
for a trial, runs it as one execution through the runner and its executors (local processes or
Ray, `--jobs` at once), and tells the study the trial's value. Only this process talks to the
study; kernels know nothing of Optuna.

- **Runs.** One parent MLflow run per search, in the notebook's experiment, created here; each
  trial's run is created by the runner as for any execution, tagged `mlflow.parentRunId` (MLflow's
  nesting does not cross into the kernel's process: the runner hands the kernel its run id, as
  always). Trial runs carry no resume key, so `mmlab run`'s cache never takes one for a plain
  execution. The parent ends with the best value (metric `best_value`), the best parameters
  (tags `mmlab.best.NAME`: MLflow parameters cannot change, and a resumed search with more
  trials may find a better one), the search's settings as parameters, and artifacts: the trials
  table, the parameters' importance, a parallel-coordinates figure.
- **The value** of a trial is the best value of `metric` over the steps its run logged (early
  stopping keeps the best epoch), or where the run has no such metric, the mean over its child
  runs (a notebook's own seeds). A run that logged none of it fails the trial.
- **Pruning** lives here, not in the kernel: while a trial runs, this process reads the pruner's
  per-epoch metric from the MLflow history of its run (or its children's, by step) every
  `POLL` seconds, reports new steps to the trial, and when Optuna's median pruner says prune,
  interrupts the kernel (`job.interrupt`: KeyboardInterrupt in the running cell). The trial is
  told PRUNED and its run ends FINISHED, tagged `mmlab.trial_state=PRUNED` and the step. This
  needs no hook in the training loop or the tracking helpers, and no database access from the
  kernel (a remote Ray worker may not reach a SQLite study); its limit: a notebook that logs its
  curve only after training (notebook 02's child runs) is judged on whole curves, and a kernel
  on another machine (a Ray cluster) cannot be interrupted: there it runs to the end and is
  told COMPLETE.
- **Resume.** The study lives in Optuna's RDB storage: a SQLite file `optuna.db` beside the
  workspace's `mlflow.db` (with a tracking server, in the workspace), or `MMLAB_OPTUNA_STORAGE`. Its
  name holds a hash of the search's definition, the trials' shared parameters and the notebook, so a
  changed search starts a new study (a change elsewhere in mmlab does not). A search holds a claim
  on its study; trials a killed search left RUNNING are therefore stale, told FAIL (their runs
  KILLED) and not counted: the next start runs what `trials` still lacks beyond the COMPLETE and
  PRUNED ones. A trial that fails counts for the invocation that ran it (a broken notebook does not
  loop), not for the next one, which runs it again."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmlab import tracking
from mmlab.batch import config, executors, job, runner
from mmlab.batch.config import Batch, BatchError, Execution, SearchSpec
from mmlab.core import extras, workspace

STORAGE_ENV = "MMLAB_OPTUNA_STORAGE"
SEARCH_TAG = "mmlab.search"  # the study's name, on the parent and on every trial's run
TRIAL_TAG = "mmlab.trial"  # the trial's number, on its run
STATE_TAG = "mmlab.trial_state"  # COMPLETE, PRUNED or FAIL, on a trial's run
RUN_ATTR = "mlflow_run_id"  # the study's (parent) and each trial's MLflow run, as user attrs
ENDED = ("COMPLETE", "PRUNED", "FAIL")  # the trial states a search counts


def require() -> Any:
    """Optuna; a BatchError naming the extra if it is not installed."""
    try:
        optuna = extras.require("optuna", "a search")
    except extras.MissingExtra as error:
        raise BatchError(str(error)) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url() -> str:
    """Where studies live: `MMLAB_OPTUNA_STORAGE`, else `optuna.db` beside a SQLite tracking
    store, else in the workspace."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    store = workspace.sqlite_path(tracking.tracking_uri())
    folder = store.parent if store is not None else workspace.root()
    return f"sqlite:///{folder / 'optuna.db'}"


def shown(url: str) -> str:
    """A storage URL without its password, for tags and terminals."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL SQLAlchemy reads: say only its scheme
        return url.split("://", 1)[0] + "://..."


def study_name(batch: Batch, stage: str, params: dict[str, Any]) -> str:
    """`BATCH.STAGE.HASH`: the hash of what makes trials comparable (not their number)."""
    search = batch.searches[stage]
    identity = {
        # neither the budget nor where the best parameters are written changes a trial
        "search": search.model_dump(exclude={"trials", "save"}),
        "parameters": params,
        # the notebook, not all of mmlab's source (`code_hash`): an edit elsewhere in the package
        # must not orphan a half-done search; each trial's run still carries the code hash
        "notebook": hashlib.sha256(batch.stages[stage][0].notebook.read_bytes()).hexdigest(),
    }
    return f"{batch.name}.{stage}.{config.parameter_hash(identity)[:8]}"


def _curve(client: Any, run_id: str, metric: str) -> dict[int, float]:
    return {m.step: m.value for m in tracking.retry(client.get_metric_history, run_id, metric)}


def _child_curves(client: Any, run_id: str, metric: str) -> list[dict[int, float]]:
    run = tracking.retry(client.get_run, run_id)
    children = tracking.retry(
        client.search_runs,
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
    )
    return [_curve(client, child.info.run_id, metric) for child in children]


def curve(run_id: str, metric: str) -> dict[int, float]:
    """`metric` by step in the run, else the mean by step over its child runs."""
    client = tracking.client()
    own = _curve(client, run_id, metric)
    if own:
        return own
    by_step: dict[int, list[float]] = {}
    for child in _child_curves(client, run_id, metric):
        for step, value in child.items():
            by_step.setdefault(step, []).append(value)
    return {step: sum(v) / len(v) for step, v in sorted(by_step.items())}


def objective(run_id: str, search: SearchSpec) -> float | None:
    """The trial's value: the best of `metric` over the run's steps, else the mean of its child
    runs' best; None if neither logged it."""
    client = tracking.client()
    best = max if search.direction == "maximize" else min
    own = _curve(client, run_id, search.metric)
    if own:
        return best(own.values())
    values = [best(c.values()) for c in _child_curves(client, run_id, search.metric) if c]
    return sum(values) / len(values) if values else None


@dataclass
class SearchReport:
    stage: str
    study: str
    storage: str
    parent_run_id: str
    results: list[runner.Result] = field(default_factory=list)  # this invocation's trials
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # trial states in the whole study
    saved: Path | None = None  # the file the best parameters were written to (`save:`)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


class SearchRun(runner.BatchRun):
    """One invocation of a search: asks trials while slots are free, tells results as they end."""

    POLL = 2.0  # seconds between looks at running trials' curves (pruning)

    def __init__(
        self,
        batch: Batch,
        stage: str,
        jobs: int,
        executor: str,
        out: runner.Print,
        view: Any = None,
        executor_options: dict[str, Any] | None = None,
        trials: int | None = None,
        upstream: dict[str, str] | None = None,
    ):
        super().__init__(batch, jobs, [stage], True, executor, out, view, executor_options)
        self.optuna = require()
        self.stage, self.search = stage, batch.searches[stage]
        self.template: Execution = batch.stages[stage][0]
        self.results = []
        self.upstream = dict(upstream or {})
        self.base = self.template.resolve(self.upstream)
        self.target = trials or self.search.trials
        self.distributions = {k: s.distribution() for k, s in self.search.parameters.items()}
        self.name = study_name(batch, stage, self.base)
        self.folder = workspace.runs_dir() / batch.name / stage / f"search-{self.name[-8:]}"
        self.storage = storage_url()
        self.told: set[int] = set()
        self.reported: dict[int, set[int]] = {}  # steps reported to each trial (by number)
        self.polled = 0.0
        self.parent = ""
        self.study: Any = None
        self.lock: Any = None
        self.budget = 0  # trials still to ask in this invocation
        self.planned = 0  # trials this invocation runs

    # ----- the study and its parent run
    def open(self) -> None:
        """Claim and load (or create) the study, settle what a killed search left, make sure
        the parent run exists and is RUNNING."""
        tracking.ensure_store()
        self.lock = workspace.claim(self.folder, self.owner)
        if self.lock is None:
            raise BatchError(
                f"{self.batch.path}: stage {self.stage!r}: the search {self.name} is running in "
                f"{workspace.claimant(self.folder)}: wait for it, or stop it"
            )
        optuna, search = self.optuna, self.search
        path = workspace.sqlite_path(self.storage)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if search.sampler.name == "random":
            sampler = optuna.samplers.RandomSampler(seed=search.sampler.seed)
        else:  # a third of the budget (2 to 10 trials) samples at random before TPE models it
            startup = min(10, max(2, search.trials // 3))
            sampler = optuna.samplers.TPESampler(seed=search.sampler.seed, n_startup_trials=startup)
        spec = search.pruner
        if spec is None or spec.name == "none":
            pruner = optuna.pruners.NopPruner()
        else:
            pruner = optuna.pruners.MedianPruner(spec.startup_trials, spec.warmup_steps)
        self.study = optuna.create_study(
            storage=optuna.storages.RDBStorage(self.storage),
            study_name=self.name,
            direction=search.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        client = tracking.client()
        stale = self.optuna.trial.TrialState.RUNNING
        for trial in self.study.get_trials(deepcopy=False, states=(stale,)):
            self.study.tell(trial.number, state=self.optuna.trial.TrialState.FAIL)
            run_id = trial.user_attrs.get(RUN_ATTR)
            if run_id:  # KILLED even if its orphaned kernel ended it FINISHED: it never counted
                tracking.retry(client.set_terminated, run_id, "KILLED")
                tracking.retry(client.set_tag, run_id, STATE_TAG, "FAIL")
        done = self._count("COMPLETE", "PRUNED")
        self.budget = self.planned = max(0, self.target - done)
        self.parent = self._parent(client)

    def _count(self, *states: str) -> int:
        wanted = tuple(getattr(self.optuna.trial.TrialState, s) for s in states)
        return len(self.study.get_trials(deepcopy=False, states=wanted))

    def _parent(self, client: Any) -> str:
        run_id = self.study.user_attrs.get(RUN_ATTR)
        if run_id:
            try:
                run = tracking.retry(client.get_run, run_id)
            except Exception:  # deleted from the store since
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                tracking.retry(client.update_run, run_id, status="RUNNING")
                return run_id
        experiment = tracking.experiment_id(self.template.notebook.stem)
        tags = {
            **self.base_tags(self.template),
            SEARCH_TAG: self.name,
            "mmlab.search_storage": shown(self.storage),
        }
        name = f"{self.stage}-search"
        run = tracking.retry(client.create_run, experiment, run_name=name, tags=tags)
        pruner = self.search.pruner
        settings = {
            "search.metric": self.search.metric,
            "search.direction": self.search.direction,
            "search.sampler": f"{self.search.sampler.name}(seed={self.search.sampler.seed})",
            "search.pruner": f"{pruner.name}({pruner.metric})" if pruner else "none",
            **{
                f"search.space.{k}": json.dumps(s.model_dump(exclude_defaults=True))
                for k, s in self.search.parameters.items()
            },
            **self.base,
        }
        runner.log_params(client, run.info.run_id, settings)
        self.study.set_user_attr(RUN_ATTR, run.info.run_id)
        return run.info.run_id

    # ----- the runner's hooks
    def output(self, execution: Execution) -> Path:
        return self.folder / f"{execution.name}.ipynb"

    def identity(self, result: runner.Result) -> tuple[dict, dict[str, str], str]:
        params, key, experiment = super().identity(result)
        # no parameter hash: a trial never stands in for a plain execution, nor one for it
        return params, {"mmlab.code_hash": key["mmlab.code_hash"]}, experiment

    def width(self) -> int:
        return self.planned or self.target

    def run_tags(self, result: runner.Result) -> dict[str, str]:
        return {
            "mlflow.parentRunId": self.parent,
            SEARCH_TAG: self.name,
            TRIAL_TAG: str(result.trial.number),
        }

    def schedule(self, executor: executors.Executor, running: dict) -> None:
        if time.monotonic() - self.polled >= self.POLL:
            self.polled = time.monotonic()
            for result in list(running.values()):
                self.watch(result)
        while len(running) < self.jobs and self.budget > 0:
            self.budget -= 1
            trial = self.study.ask(self.distributions)
            execution = replace(
                self.template,
                name=f"trial-{trial.number:03d}",
                parameters={**self.template.parameters, **trial.params},
            )
            result = runner.Result(execution, trial=trial)
            self.results.append(result)
            result.claim = workspace.claim(self.output(execution), self.owner)
            workspace.sweep_stale(self.output(execution))
            submitted = self.prepare(result)
            trial.set_user_attr(RUN_ATTR, result.run_id)
            result.status, result.started = "running", time.perf_counter()
            running[executor.submit(submitted)] = result
            self.show(result)

    def watch(self, result: runner.Result) -> None:
        """Report the running trial's new steps; interrupt its kernel if the pruner says so."""
        if result.pruned is not None:
            return
        steps = self.report(result)  # none without a pruner
        if steps and result.trial.should_prune():
            result.pruned = max(steps)
            if not job.interrupt(result.progress):
                result.pruned = None  # another machine's kernel: it runs to the end

    def report(self, result: runner.Result) -> list[int]:
        """Report the steps of the pruner's metric the trial has not reported yet; all steps."""
        pruner = self.search.pruner
        if pruner is None or pruner.name == "none" or not pruner.metric:
            return []
        values = curve(result.run_id, pruner.metric)
        reported = self.reported.setdefault(result.trial.number, set())
        for step, value in sorted(values.items()):
            if step not in reported and math.isfinite(value):
                result.trial.report(value, step)
                reported.add(step)
        return sorted(values)

    def record(self, result: runner.Result, outcome: job.Outcome) -> None:
        state = self.optuna.trial.TrialState
        value = None
        if result.pruned is not None:  # stopped on purpose: not a failure of the notebook
            outcome = replace(outcome, ok=True, error="")
        elif outcome.ok:
            self.report(result)  # the whole curve: later trials' pruning compares against it
            value = objective(result.run_id, self.search)
            if value is None or not math.isfinite(value):
                error = f"the run logged no {self.search.metric!r} (the search's metric)"
                outcome = replace(outcome, ok=False, error=error)
        super().record(result, outcome)
        if result.pruned is not None:
            self.study.tell(result.trial, state=state.PRUNED)
            result.headline = f"pruned at step {result.pruned}"
            tags = {STATE_TAG: "PRUNED", "mmlab.pruned_step": str(result.pruned)}
        elif outcome.ok:
            self.study.tell(result.trial, value)
            result.headline = f"{self.search.metric}={value:.4g}"
            tags = {STATE_TAG: "COMPLETE"}
        else:
            self.study.tell(result.trial, state=state.FAIL)
            tags = {STATE_TAG: "FAIL"}
        self.told.add(result.trial.number)
        client = tracking.client()
        for key, text in tags.items():
            tracking.retry(client.set_tag, result.run_id, key, text)

    # ----- the whole search
    def search_run(self) -> SearchReport:
        self.open()
        done = self.target - self.budget
        self.view.line(
            f"search {self.name}: {self.target} trials, {done} done before, {self.budget} to run, "
            f"{self.jobs} jobs; study in {shown(self.storage)}; parent run {self.parent}"
        )
        client = tracking.client()
        try:
            if self.budget:
                self.run()
        except BaseException:  # stopped: what was asked and not told is FAIL, its run KILLED
            for result in self.results:
                if result.trial is not None and result.trial.number not in self.told:
                    self.study.tell(result.trial, state=self.optuna.trial.TrialState.FAIL)
                    if result.run_id:
                        run = tracking.retry(client.get_run, result.run_id)
                        if run.info.status == "RUNNING":  # created, not yet submitted
                            tracking.retry(client.set_terminated, result.run_id, "KILLED")
                        tracking.retry(client.set_tag, result.run_id, STATE_TAG, "FAIL")
            tracking.retry(client.set_terminated, self.parent, "KILLED")
            raise
        finally:
            self.lock.release()
        report = SearchReport(self.stage, self.name, self.storage, self.parent, self.results)
        report.counts = {s: n for s in ENDED if (n := self._count(s))}
        if self._count("COMPLETE"):
            best = self.study.best_trial
            report.best_value, report.best_params = best.value, dict(best.params)
            self.log_best(client, best)
            if self.search.save is not None:
                report.saved = self.save_best(best, report.counts)
        self.log_artifacts(client)
        status = "FINISHED" if report.ok and report.best_value is not None else "FAILED"
        tracking.retry(client.set_terminated, self.parent, status)
        return report

    def log_best(self, client: Any, best: Any) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        values = {"best_value": best.value, "best_trial": best.number}
        values |= {f"trials_{s.lower()}": self._count(s) for s in ENDED}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items()]
        params = best.params.items()
        texts = {f"mmlab.best.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in params}
        texts["mmlab.best_run_id"] = str(best.user_attrs.get(RUN_ATTR, ""))
        texts |= {"mmlab.best_value": f"{best.value:.6g}", tracking.HEADLINE_TAG: "best_value"}
        tags = [RunTag(k, v) for k, v in texts.items()]
        tracking.retry(client.log_batch, self.parent, metrics=metrics, tags=tags)

    def save_best(self, best: Any, counts: dict[str, int]) -> Path:
        """Write the best parameters as entry `save.entry` of the YAML file `save.path`, keeping
        its other entries, with what the search was: its parent run, metric and trial counts."""
        import yaml

        save = self.search.save
        path = Path(save.path).expanduser()
        path = path if path.is_absolute() else workspace.root() / path
        document = yaml.safe_load(path.read_text()) if path.is_file() else None
        if not isinstance(document, dict) or not isinstance(document.get("entries"), dict):
            document = {"entries": {}}
        document["entries"][save.entry] = {
            "parameters": dict(best.params),
            "search": {
                "batch": self.batch.name,
                "stage": self.stage,
                "study": self.name,
                "parent_run_id": self.parent,
                "best_run_id": str(best.user_attrs.get(RUN_ATTR, "")),
                "metric": self.search.metric,
                "direction": self.search.direction,
                "value": float(best.value),
                "trials": {s.lower(): n for s, n in counts.items()},
                "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            },
        }
        header = (
            "# Per-method settings: each entry the best parameters of one search "
            "(mmlab.batch.tune, `save:`).\n"
        )
        with workspace.atomic_path(path) as tmp:
            tmp.write_text(header + yaml.safe_dump(document, sort_keys=False))
        return path

    def log_artifacts(self, client: Any) -> None:
        """The trials table, the importance table and the parallel-coordinates figure."""
        with tempfile.TemporaryDirectory(prefix="mmlab-search-") as scratch:
            folder = Path(scratch)
            table = self.study.trials_dataframe(attrs=("number", "value", "params", "state"))
            table.to_csv(folder / "trials.csv", index=False)
            complete = self._count("COMPLETE")
            if complete >= 2 and len(self.distributions) > 0:
                try:
                    # "importances will be equal": the table says so
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        importance = self.optuna.importance.get_param_importances(self.study)
                except (RuntimeError, ValueError):  # too little variation to say
                    importance = {}
                if importance:
                    import pandas as pd

                    pd.DataFrame(
                        {"parameter": list(importance), "importance": list(importance.values())}
                    ).to_csv(folder / "importance.csv", index=False)
            if complete >= 1:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
                from optuna.visualization import matplotlib as optuna_plots

                try:
                    with warnings.catch_warnings():  # "experimental": its interface may change
                        warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
                        warnings.simplefilter("ignore", UserWarning)  # one trial: a flat axis
                        axes = optuna_plots.plot_parallel_coordinate(self.study)
                    axes.figure.savefig(folder / "parallel_coordinates.png", bbox_inches="tight")
                    plt.close(axes.figure)
                except (ValueError, RuntimeError):
                    pass
            for path in sorted(folder.iterdir()):
                tracking.retry(client.log_artifact, self.parent, str(path), "search")


def require_search(batch: Batch, stage: str) -> None:
    if stage not in batch.searches:
        searches = ", ".join(batch.searches) or "none"
        raise BatchError(
            f"{batch.path}: stage {stage!r} has no 'search' block (stages with one: {searches})"
        )


def search(
    batch: Batch,
    stage: str,
    *,
    jobs: int,
    trials: int | None = None,
    executor: str = "local",
    executor_options: dict[str, Any] | None = None,
    out: runner.Print = print,
    view: Any = None,
    upstream: dict[str, str] | None = None,
) -> SearchReport:
    """Run (or resume) the search of `stage`; `upstream`: run ids of the stages it needs."""
    require_search(batch, stage)
    run = SearchRun(batch, stage, jobs, executor, out, view, executor_options, trials, upstream)
    return run.search_run()


def summary(report: SearchReport) -> list[str]:
    counts = ", ".join(f"{n} {s}" for s, n in report.counts.items()) or "no trials"
    lines = [f"search {report.study}: {counts}; parent run {report.parent_run_id}"]
    if report.best_value is not None:
        params = " ".join(f"{k}={v!r}" for k, v in report.best_params.items())
        lines.append(f"  best value {report.best_value:.4g}: {params}")
    if report.saved is not None:
        lines.append(f"  best parameters written to {report.saved}")
    return lines
