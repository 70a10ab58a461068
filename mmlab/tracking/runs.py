"""MLflow conventions: the one module that knows run names, tags, artifacts and the store.
Notebooks call `start(...)`, log through the helpers below and end with `headline(...)`. Under
the runner `MLFLOW_RUN_ID` names its run and `start` resumes it. Logging is batched, and every
store call is retried on "database is locked": a transaction that reads before it writes can
get SQLITE_BUSY at once, busy timeout or not, when several processes write."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag

from mmlab.core import workspace
from mmlab.tracking import experiments, notebook_status
from mmlab.tracking.store import active_run_id, client, ensure_store, retry

HEADLINE_TAG = "mmlab.headline"
NOTEBOOK_TAG = "mmlab.notebook"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


# The run this kernel works in, and whether this module started it (so `finish` may end it).
_state: dict[str, Any] = {"run": None, "owned": False, "params": None}


# --------------------------------------------------------------------------- runs


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become `a.b.c` keys; values become strings MLflow accepts. An empty dict
    stays a parameter (`{}`), so every name of a parameters cell is logged."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


def notebook_file(notebook: str, namespace: Mapping[str, Any] | None = None) -> Path | None:
    """The `.ipynb` file of the notebook named `notebook` that this kernel runs.
    Looked up via `MMLAB_NOTEBOOK_PATH` (runner), `JPY_SESSION_NAME` (Jupyter),
    `__vsc_ipynb_file__` (VS Code), then the kernel's folder, its `notebooks/` and the workspace's.
    A session file of another name counts when the kernel defines all its parameters (a renamed
    copy). Outside a kernel, None; in a kernel, an error saying what to do."""
    from mmlab.core import parameters_cell

    namespace = namespace or {}
    wanted = f"{notebook}.ipynb"
    hints = [
        os.environ.get("MMLAB_NOTEBOOK_PATH"),
        os.environ.get("JPY_SESSION_NAME"),
        namespace.get("__vsc_ipynb_file__"),
    ]
    places = [Path(h) for h in hints if h and Path(h).name == wanted]
    places += [Path.cwd() / wanted, Path.cwd() / "notebooks" / wanted]
    places.append(workspace.root() / "notebooks" / wanted)
    for place in places:
        if place.is_file():
            return place
    for hint in hints[1:]:
        if hint and str(hint).endswith(".ipynb") and Path(hint).is_file():
            names = parameters_cell.names(Path(hint))
            if names and all(name in namespace for name in names):
                return Path(hint)
    if "get_ipython" not in namespace:
        return None
    raise FileNotFoundError(
        f"tracking.start(notebook={notebook!r}): cannot find {wanted} to read its parameters "
        f"cell (looked at {', '.join(str(p) for p in places)}); run the kernel in the "
        f"notebook's folder (papermill --cwd) or pass params=... to start"
    )


def kernel_parameters(notebook: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The names the notebook's `parameters` cell assigns, with their values in `namespace`, so a
    Papermill-injected cell overrides the defaults."""
    from mmlab.core import parameters_cell

    path = notebook_file(notebook, namespace)
    names = parameters_cell.names(path) if path is not None else []
    return {name: namespace[name] for name in names if name in namespace}


def start(
    notebook: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> mlflow.ActiveRun:
    """Start (or resume, under the runner) this notebook's run and log its parameters.
    Without `params`, `kernel_parameters`. Under `MLFLOW_RUN_ID` the runner's run is resumed and
    left to it; else a run starts in the notebook's experiment. Called again in a kernel, the same
    run returns; with changed parameters, one started here is finished and a fresh one begins."""
    if params is None:
        caller = inspect.currentframe().f_back
        params = kernel_parameters(notebook, caller.f_globals if caller else {})
    flat = flatten(params or {})
    current = _state["run"]
    if current is not None and mlflow.active_run() is not None:
        if flat == _state["params"] or not _state["owned"]:
            _log_new_params(flat)
            return current
        finish()
    uri = ensure_store()
    mlflow.set_tracking_uri(uri)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    all_tags = {NOTEBOOK_TAG: notebook, **(tags or {})}
    active = mlflow.active_run()
    if run_id and active is not None and active.info.run_id == run_id:
        run = active  # the runner's run is still active in this kernel (start after finish)
    elif run_id:
        run = retry(mlflow.start_run, run_id=run_id)
    else:
        run = retry(
            mlflow.start_run, experiment_id=experiments.experiment_id(notebook, uri), tags=all_tags
        )
    _state.update(run=run, owned=not run_id, params=flat)
    if run_id:
        set_tags(all_tags)
    _log_new_params(flat)
    return run


def _log_new_params(flat: Mapping[str, str]) -> None:
    """Log the flattened parameters the run lacks. MLflow parameters cannot change, so a value
    that differs from the logged one keeps the logged one, with a warning."""
    logged = retry(client().get_run, active_run_id()).data.params
    changed = {k: (logged[k], v) for k, v in flat.items() if k in logged and logged[k] != v}
    if changed:
        warnings.warn(
            "parameters differ from the values logged for this run, which are kept: "
            + ", ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in changed.items()),
            stacklevel=3,
        )
    items = [Param(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
        retry(client().log_batch, active_run_id(), params=items[i : i + 100])


def finish(status: str = "FINISHED") -> None:
    """End the run `start` began itself; a run the runner owns is left for the runner."""
    if _state["run"] is None:
        return
    if _state["owned"]:
        if notebook_status.failed(_state["run"].info.run_id):
            status = "FAILED"  # a cell raised in this run: re-running start does not hide it
        while mlflow.active_run() is not None:  # close children left open, then the run
            retry(mlflow.end_run, status=status)
    _state.update(run=None, owned=False, params=None)


@contextlib.contextmanager
def child_run(
    name: str, tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """A nested run (one fusion method x seed...). Helpers log to it while the block runs."""
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("child_run needs an active run: call mmlab.tracking.start first")
    # Without a run_id, mlflow.start_run resumes the run MLFLOW_RUN_ID names, nested or not
    # (and deletes the variable): under the runner, the first child would reopen the parent.
    runner_run = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        child = retry(
            mlflow.start_run,
            run_name=name,
            nested=True,
            experiment_id=parent.info.experiment_id,
            tags=dict(tags or {}),
        )
    finally:
        if runner_run is not None:
            os.environ["MLFLOW_RUN_ID"] = runner_run
    try:
        log_params(params or {})
        yield child
    except BaseException:
        retry(mlflow.end_run, status="FAILED")
        raise
    retry(mlflow.end_run, status="FINISHED")


# --------------------------------------------------------------------------- logging helpers


def log_params(params: Mapping[str, Any]) -> None:
    """Log (flattened) parameters in one batch."""
    flat = flatten(params)
    if flat:
        items = [Param(k, v) for k, v in flat.items()]
        retry(client().log_batch, active_run_id(), params=items)


def set_tags(tags: Mapping[str, Any]) -> None:
    if tags:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        retry(client().log_batch, active_run_id(), tags=items)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log a dict of metrics in one batched call."""
    log_history({k: [v] for k, v in metrics.items()}, start_step=step or 0)


def log_history(history: Mapping[str, list[float]], start_step: int = 0) -> None:
    """Log whole curves (`{"loss": [..], "val_loss": [..]}`), step = index, in one batch."""
    now = int(time.time() * 1000)
    items = [
        Metric(name, float(value), now, start_step + i)
        for name, values in history.items()
        for i, value in enumerate(values)
    ]
    if items:
        retry(client().log_batch, active_run_id(), metrics=items)


def headline(metric: str, value: float) -> None:
    """Log the metric this notebook is judged by, at its last step, and tag the run with it."""
    history = retry(client().get_metric_history, active_run_id(), metric)
    log_metrics({metric: value}, step=max((m.step for m in history), default=0))
    set_tags({HEADLINE_TAG: metric})


def log_figure(fig: Any, name: str) -> None:
    """Log a matplotlib figure as an image artifact (`name` like `"curves.png"`)."""
    retry(client().log_figure, active_run_id(), fig, name)


TABLE_WRITERS: dict[str, Callable[[Any, Path], None]] = {
    ".csv": lambda df, path: df.to_csv(path, index=False),
    ".json": lambda df, path: df.to_json(path, orient="records", indent=1),
    ".html": lambda df, path: path.write_text(df.to_html(index=False)),
}


def log_table(df: Any, name: str) -> None:
    """Log a pandas DataFrame as an artifact; the suffix of `name` picks the format."""
    suffix = Path(name).suffix
    if suffix not in TABLE_WRITERS:
        raise ValueError(
            f"log_table({name!r}): unknown format {suffix!r}; use {sorted(TABLE_WRITERS)}"
        )
    log_file(lambda path: TABLE_WRITERS[suffix](df, path), name)


def log_file(write: Callable[[Path], None], name: str) -> None:
    """Log an artifact written by `write(path)`; `name` may hold folders (`env/pip.txt`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        write(path)
        folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
        retry(client().log_artifact, active_run_id(), str(path), folder)


def log_text(text: str, name: str) -> None:
    log_file(lambda path: path.write_text(text), name)


def device() -> str:
    """`MMLAB_DEVICE` if set, else cuda, mps or cpu (whichever torch can use)."""
    forced = os.environ.get("MMLAB_DEVICE")
    if forced:
        return forced
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def environment() -> dict[str, Any]:
    """What the run ran on: python, platform, torch version/threads/device, CPU count."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
    }
    if "torch" in sys.modules or _installed("torch"):
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def pip_freeze() -> str:
    """Installed distributions as `name==version` lines (pip freeze without a subprocess)."""
    names = {
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in metadata.distributions()
        if dist.metadata["Name"]
    }
    return "\n".join(sorted(names, key=str.lower)) + "\n"


def log_environment() -> dict[str, Any]:
    """Log the environment as `env.*` params plus `environment/requirements.txt`."""
    info = environment()
    log_params({"env": info})
    log_text(pip_freeze(), "environment/requirements.txt")
    return info


def log_dataset(
    dataset: Mapping[str, Any], fingerprint: str, name: str, source: str = ""
) -> dict[str, Any]:
    """Record a dataset (a DatasetDict or split -> table mapping) as run inputs, one per split
    (digest = fingerprint, context = split), and tag the run with the fingerprint."""
    from mmlab.tracking import lineage

    inputs = lineage.log_splits(dataset, fingerprint, name, source)
    set_tags({"mmlab.dataset": name, "mmlab.dataset.fingerprint": fingerprint})
    plan = getattr(dataset, "split_plan", None)  # how `load_dataset` made missing splits
    if plan is not None:
        set_tags({"mmlab.dataset.splits": plan.describe()})
    return inputs


# In a notebook kernel, a cell that raises marks the run FAILED (see mmlab.tracking.notebook_status).
notebook_status.watch_cells()
