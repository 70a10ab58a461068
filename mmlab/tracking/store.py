"""The tracking store: its URI, a ready client, retries on a busy SQLite, and whether a server
answers. Every other tracking module reaches MLflow's store through these."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mmlab.core import workspace
from mmlab.core.workspace import sqlite_path

T = TypeVar("T")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the workspace's SQLite store; a relative SQLite path is
    made absolute so kernels in the notebook's folder write to the same database."""
    uri = workspace.tracking_uri()
    db = sqlite_path(uri)
    return f"sqlite:///{db}" if db is not None else uri


def default_artifact_root(uri: str | None = None) -> str | None:
    """`mlartifacts/` beside a SQLite store's database file; a server store decides itself."""
    db = sqlite_path(uri or tracking_uri())
    if db is None:
        return None
    if db.parent.resolve() == workspace.root():
        return workspace.artifact_root()
    return (db.parent / "mlartifacts").resolve().as_uri()


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(fn: Callable[..., T], *args: Any, attempts: int = 12, **kwargs: Any) -> T:
    """Call `fn`, retrying with jittered exponential backoff while SQLite reports a lock."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # MlflowException or sqlalchemy OperationalError
            if not _is_locked(error) or attempt == attempts - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- a tracking server


class TrackingServerError(RuntimeError):
    """The tracking server (`MLFLOW_TRACKING_URI=http...`) does not answer or refuses us."""


def is_server(uri: str | None = None) -> bool:
    return (uri or tracking_uri()).startswith(("http://", "https://"))


def answers(uri: str | None = None) -> bool:
    """Whether the tracking server answers: one look at /health without MLflow's minutes of retries.
    Only a failed connection counts; a database store always answers."""
    uri = uri or tracking_uri()
    if not is_server(uri):
        return True
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=30)
    except requests.ConnectionError:  # refused, no route, no such host, connect timeout
        return False
    except requests.RequestException:
        return True
    return True


def unreachable(error: BaseException | str) -> bool:
    """Whether an error (or its line) says the tracking server did not answer: connection
    refused or timed out, or a 5xx, after MLflow's own retries."""
    text = str(error)
    if isinstance(error, TrackingServerError) or text.startswith("TrackingServerError:"):
        return True
    return "API request to" in text and bool(
        re.search(r"failed with (timeout )?exception|failed with error code 5\d\d", text)
    )


def why_unreachable(error: BaseException | str) -> str:
    """The short reason in MLflow's long error: `[Errno 111] Connection refused`, `timed
    out`, `error code 503`; "" when it gives none."""
    text = str(error)
    for pattern in (r"\[Errno -?\d+\] [^'\")\]]+", r"error code 5\d\d", r"timed out"):
        found = re.search(pattern, text)
        if found:
            return found.group(0).strip()
    return ""


def server_down(uri: str | None = None) -> str:
    """What to say, and do, when the tracking server stopped answering."""
    return (
        f"the tracking server {uri or tracking_uri()} does not answer: start it again "
        f"(`make server`, or ask whoever runs it), or unset MLFLOW_TRACKING_URI to track in "
        f"the workspace's SQLite file"
    )


_ready_stores: set[str] = set()


def ensure_store(uri: str | None = None) -> str:
    """Make sure the store exists with MLflow's schema; return its URI. A missing database is built
    under a temporary name and file lock, then renamed, so concurrent migrations never collide."""
    uri = uri or tracking_uri()
    if uri in _ready_stores:
        return uri
    db = sqlite_path(uri)
    if db is None:
        if not answers(uri):
            raise TrackingServerError(server_down(uri))
        try:
            retry(MlflowClient(uri).search_experiments, max_results=1)
        except MlflowException as error:
            if error.get_http_status_code() not in (401, 403):
                raise
            raise TrackingServerError(
                f"the tracking server {uri} refuses us ({error.message.splitlines()[0]}): "
                f"export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
    elif not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(db.parent / f".{db.name}.lock"):  # flock or msvcrt: Windows too
            if not db.exists():
                with workspace.atomic_path(db) as tmp:
                    MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)
    _ready_stores.add(uri)
    return uri


def client(uri: str | None = None) -> MlflowClient:
    """An MlflowClient on the (ready) tracking store."""
    return MlflowClient(ensure_store(uri))


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call mmlab.tracking.start(notebook=...) first")
    return run.info.run_id
