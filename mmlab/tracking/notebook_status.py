"""A notebook cell that raises marks its MLflow run FAILED, however the notebook runs.
Without the runner (papermill, JupyterLab) MLflow's exit hook would end the run FINISHED.
`watch_cells()` registers a `post_run_cell` handler: a raising cell sets status FAILED and tag
`mmlab.error` (the traceback's last line), and at exit the run ends FAILED."""

from __future__ import annotations

import atexit
import sys

ERROR_TAG = "mmlab.error"
_state: dict = {"shell": None, "failed": None}


def error_line(error: BaseException) -> str:
    """`ValueError: boom`: the last line of the traceback."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".strip()


def mark_failed(run_id: str, error: BaseException) -> None:
    """Status FAILED and the error's line as a tag, leaving the run open for more cells."""
    from mlflow.entities import RunTag

    from mmlab.tracking import store

    _state["failed"] = run_id  # first: the run ends FAILED at exit even if the store is down
    client = store.client()
    store.retry(client.log_batch, run_id, tags=[RunTag(ERROR_TAG, error_line(error)[:5000])])
    store.retry(client.update_run, run_id, status="FAILED")


def failed(run_id: str) -> bool:
    """Whether a cell raised while `run_id` was the active run."""
    return run_id == _state["failed"]


def _after_cell(result) -> None:
    import mlflow

    error = result.error_in_exec or result.error_before_exec
    run = mlflow.active_run()
    if error is None or run is None:
        return
    from mmlab.tracking import store

    if store.unreachable(error):  # the server is down: no use waiting for it once more
        _state["failed"] = run.info.run_id
        print(f"mmlab: run {run.info.run_id} not marked FAILED: {error}", file=sys.stderr)
        return
    try:
        mark_failed(run.info.run_id, error)
    except Exception as failure:  # the store is down: say so, never hide the cell's own error
        print(f"mmlab: could not mark run {run.info.run_id} FAILED: {failure}", file=sys.stderr)


def _at_exit() -> None:
    """Runs before MLflow's exit hook (registered later): a failed run ends FAILED."""
    import mlflow

    run = mlflow.active_run()
    if run is not None and failed(run.info.run_id):
        while mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")


def watch_cells() -> bool:
    """Install the handler in the running IPython shell (once); False outside IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or _state["shell"] is shell:
        return shell is not None
    shell.events.register("post_run_cell", _after_cell)
    if _state["shell"] is None:
        atexit.register(_at_exit)
    _state["shell"] = shell
    return True
