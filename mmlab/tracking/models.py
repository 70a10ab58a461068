"""Models in MLflow's registry: one resolver for every way to name a model, aliases, promotion.
`model_uri` takes "latest", a run id, `models:/` or `runs:/` URIs, or a folder holding MLmodel.
Notebook 03 registers each captioner (alias `candidate`); notebook 04 moves `champion` to one
that scores better than the champion did on the same data."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CAPTIONER, SEARCHER = "mmlab-captioner", "mmlab-searcher"
REGISTERED_MODEL = CAPTIONER
TRAINED_BY = {CAPTIONER: "03_caption_training", SEARCHER: "05_cross_modal_retrieval"}
MODEL_ARTIFACT = "model"
CANDIDATE, CHAMPION = "candidate", "champion"
EVALUATION_TAG = "mmlab.evaluation"  # on a version: {metric: {data: {value, run_id}}}
KEPT_EVALUATIONS = 20  # per metric, the newest (a tag holds at most 5000 characters)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# models:/NAME@ALIAS, models:/NAME/VERSION (or /latest), and MLflow 3's models:/<model id>
_MODELS_URI = re.compile(r"^models:/([^/@]+(@[\w-]+|/\d+|/latest)|m-[0-9a-f]+)$")
FORMS = (
    "a run id, runs:/<run id>/model, models:/NAME@ALIAS, models:/NAME/VERSION, a local model "
    "folder (holding an MLmodel file), or 'latest' (the newest registered version of the model)"
)


@contextlib.contextmanager
def quiet_transfers():
    """No artifact progress bars in notebook output while a model moves."""
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def _client():
    import mlflow

    from mmlab.tracking import store

    uri = store.ensure_store()
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve against the same store
    mlflow.set_registry_uri(uri)
    return store.client(uri)


def latest_version(name: str = CAPTIONER):
    """The newest version of registered model `name`, or a LookupError saying what to run."""
    from mmlab.tracking import store

    client = _client()
    versions = store.retry(client.search_model_versions, f"name = '{name}'")
    if not versions:
        raise LookupError(
            f"no registered model {name!r} in {store.ensure_store()}: run notebook "
            f"{TRAINED_BY.get(name, 'that trains it')} first (it registers every model it "
            f"trains), or pass {FORMS}"
        )
    return max(versions, key=lambda v: int(v.version))


def model_uri(source: str | Path = "latest", name: str = CAPTIONER) -> str:
    """Any accepted way to name a model -> an MLflow model URI or a local folder path;
    'latest' is the newest version of the registered model `name`."""
    text = str(source).strip()
    if text == "latest":
        latest = latest_version(name)
        return f"models:/{latest.name}/{latest.version}"
    if _RUN_ID.match(text):
        return f"runs:/{text}/{MODEL_ARTIFACT}"
    if text.startswith("runs:/"):
        return text
    if text.startswith("models:/"):
        if not _MODELS_URI.match(text):
            raise ValueError(f"{text!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return text
    if "://" in text:
        return text  # any other MLflow artifact URI (s3://, file://...)
    path = Path(text).expanduser()
    if not (path / "MLmodel").is_file():
        raise FileNotFoundError(f"{text!r} is not a model: expected {FORMS}")
    return str(path.resolve())


def sqlite_alias(uri: str) -> str | None:
    """`models:/NAME/VERSION` that `models:/NAME@ALIAS` names, read from the workspace's SQLite
    store with the standard library, so a command reading a cached model never imports MLflow.
    None for a server, another MLflow workspace or unexpected tables: MLflow answers then."""
    import sqlite3

    from mmlab.core import workspace

    match = re.fullmatch(r"models:/([^/@]+)@([^/@]+)", uri)
    db = workspace.sqlite_path(workspace.tracking_uri())
    if not match or db is None or not db.is_file() or os.environ.get("MLFLOW_WORKSPACE"):
        return None
    query = (
        "SELECT version FROM registered_model_aliases "
        "WHERE workspace = 'default' AND name = ? AND alias = ?"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            row = connection.execute(query, match.groups()).fetchone()
    except sqlite3.Error:
        return None
    return f"models:/{match[1]}/{row[0]}" if row else None


def logged_uri(info, registered_name: str | None = None) -> str:
    """`models:/NAME/VERSION` for a model the active run registered, else `runs:/<run id>/<artifact>`."""
    version = getattr(info, "registered_model_version", None)
    if registered_name and version:
        return f"models:/{registered_name}/{version}"
    return f"runs:/{info.run_id}/{info.artifact_path or info.name}"


def download(source: str | Path, destination: str | Path, name: str = CAPTIONER) -> Path:
    """The model's files under `destination` (a local folder is used where it is); 'latest'
    is the newest version of the registered model `name`."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    uri = model_uri(source, name)
    if Path(uri).is_dir():
        return Path(uri)
    from mmlab.tracking import store

    _client()
    try:
        with quiet_transfers():
            path = store.retry(
                mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=str(destination)
            )
        return Path(path)
    except MlflowException as error:
        raise LookupError(f"{source!r} ({uri}): {error.message}") from None


def version_of(source: str | Path):
    """The registered version a `source` names (models:/, or a run that registered one), or None."""
    from mlflow.exceptions import MlflowException

    from mmlab.tracking import store

    uri = model_uri(source)
    client = _client()
    if uri.startswith(("runs:/", "models:/m-")):  # a logged model: registered by its run?
        model_id = logged_model_id(uri)
        if uri.startswith("runs:/"):
            run_id = uri[len("runs:/") :].split("/")[0]
        else:
            run_id = store.retry(client.get_logged_model, model_id).source_run_id
        found = store.retry(client.search_model_versions, f"run_id = '{run_id}'")
        if model_id is not None:  # MLflow 3: a version's source is its logged model
            found = [v for v in found if v.source == f"models:/{model_id}"]
        return max(found, key=lambda v: int(v.version)) if found else None
    if uri.startswith("models:/"):
        name, _, alias = uri[len("models:/") :].partition("@")
        name, _, version = name.partition("/")
        try:
            if alias:
                return store.retry(client.get_model_version_by_alias, name, alias)
            if version == "latest":
                return latest_version(name)
            return store.retry(client.get_model_version, name, version)
        except (MlflowException, LookupError):
            return None
    return None


def logged_model_id(source: str | Path) -> str | None:
    """MLflow 3's id of the logged model (`m-...`) a source names: what metrics link to."""
    from mlflow.models import Model

    from mmlab.tracking import store

    _client()
    with quiet_transfers():
        return store.retry(Model.load, model_uri(source)).model_id


def set_alias(name: str, alias: str, version: str | int) -> None:
    from mmlab.tracking import store

    store.retry(_client().set_registered_model_alias, name, alias, str(version))


def evaluations(version) -> dict:
    """The evaluations recorded on a model version: {metric: {data: {value, run_id}}}."""
    try:
        return json.loads(version.tags.get(EVALUATION_TAG, "{}"))
    except json.JSONDecodeError:
        return {}


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    version: str | None
    reason: str


def promote(
    source: str | Path,
    metric: str,
    value: float,
    *,
    data: str,
    run_id: str = "",
    alias: str = CHAMPION,
    higher_is_better: bool = True,
) -> Promotion:
    """Record `metric = value` (on data fingerprint `data`) on the version, and point `alias` at it
    when it beats the alias's version on the same data or no version holds the alias."""
    from mlflow.exceptions import MlflowException

    from mmlab.tracking import store

    version = version_of(source)
    if version is None:
        return Promotion(False, None, f"{source} is not a registered model version")
    client = _client()
    record = evaluations(version)
    scores = {k: v for k, v in record.get(metric, {}).items() if k != data}
    scores[data] = {"value": float(value), "run_id": run_id}
    record[metric] = dict(list(scores.items())[-KEPT_EVALUATIONS:])
    tag = json.dumps(record)
    store.retry(client.set_model_version_tag, version.name, version.version, EVALUATION_TAG, tag)
    try:
        current = store.retry(client.get_model_version_by_alias, version.name, alias)
    except MlflowException:  # no version holds the alias yet
        current = None
    if current is not None and current.version != version.version:
        theirs = evaluations(current).get(metric, {}).get(data)
        if theirs is None:
            why = (
                f"{alias} is version {current.version}, not evaluated on this data ({metric}); kept"
            )
            return Promotion(False, version.version, why)
        better = value > theirs["value"] if higher_is_better else value < theirs["value"]
        if not better:
            why = f"{alias} version {current.version} has {metric} {theirs['value']:.4f}"
            return Promotion(False, version.version, f"{why}, not beaten by {value:.4f}; kept")
    set_alias(version.name, alias, version.version)
    return Promotion(True, version.version, f"version {version.version} is {alias}")


def serve_command(source: str | Path, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` for the model `source` names, in this environment, against the
    workspace store (the command line and its environment)."""
    import sys

    from mmlab.tracking import store

    uri = model_uri(source)
    if uri.startswith("models:/") and version_of(uri) is None:
        hint = (
            " (notebook 04 sets champion; --model latest serves the newest)" if "@" in uri else ""
        )
        raise LookupError(f"{uri} names no registered model version{hint}")
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.ensure_store()}
    # MLflow starts `uvicorn` by name: this Python's scripts first, venv activated or not
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    return [*command, "--env-manager", "local", "--host", host, "--port", str(port)], env


__all__ = [
    "CANDIDATE",
    "CAPTIONER",
    "CHAMPION",
    "REGISTERED_MODEL",
    "SEARCHER",
    "TRAINED_BY",
    "Promotion",
    "download",
    "latest_version",
    "logged_uri",
    "logged_model_id",
    "model_uri",
    "promote",
    "serve_command",
    "set_alias",
    "version_of",
]


def log_pyfunc(
    arguments: Callable[[Path], dict],
    name: str = MODEL_ARTIFACT,
    registered_model_name: str | None = None,
    alias: str | None = None,
):
    """Log a pyfunc model under the active run and, with `registered_model_name`, register a
    version and point `alias` at it. `arguments(folder)` writes the model's files under the
    temporary `folder` and returns the rest of `mlflow.pyfunc.log_model`'s keyword arguments
    (python_model, artifacts, ...). Returns MLflow's ModelInfo."""
    import tempfile

    import mlflow.pyfunc
    from mlflow.tracking.fluent import active_run

    from mmlab.tracking import store

    if active_run() is None:
        raise RuntimeError("no active MLflow run: call mmlab.tracking.start(notebook=...) first")
    with tempfile.TemporaryDirectory() as tmp, quiet_transfers():
        info = store.retry(
            mlflow.pyfunc.log_model,
            name=name,
            registered_model_name=registered_model_name,
            **arguments(Path(tmp)),
        )
    if registered_model_name and alias:
        set_alias(registered_model_name, alias, info.registered_model_version)
    return info


def save_pyfunc(arguments: Callable[[Path], dict], path: str | Path) -> Path:
    """The pyfunc model `arguments` describes (as for `log_pyfunc`) as a local MLflow model
    folder at `path`, written atomically."""
    import tempfile

    import mlflow.pyfunc

    from mmlab.core.workspace import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as extra, quiet_transfers():
        mlflow.pyfunc.save_model(str(tmp), **arguments(Path(extra)))
    return path


def cache_folder(uri: str, kind: str) -> Path | None:
    """Where the files of a run's or a version's model of `kind` are cached; None for an alias
    or any other URI (an alias may move: nothing stable to key on). Versions are numbered per
    store, so they are keyed by it."""
    import hashlib

    from mmlab.core import workspace

    key = re.fullmatch(r"(runs|models):/([^@]+)", uri)
    if key is None:
        return None
    folder = workspace.cache_dir() / kind
    if key[1] == "models":
        store = str(workspace.sqlite_path(workspace.tracking_uri()) or workspace.tracking_uri())
        folder = folder / hashlib.sha256(store.encode()).hexdigest()[:12]
    return folder / key[2].strip("/")


def cached_files(
    source: str | Path,
    name: str,
    kind: str,
    files_in: Callable[[Path], Path],
    use: Callable[[Path], T],
    marker: str = "config.json",
    missing: str = "",
) -> T:
    """`use(folder)` on the model files `source` names (any `model_uri` form), downloaded once
    per run or version into `cache_folder(uri, kind)`. `files_in(model)` finds the files inside
    a downloaded MLflow model; a complete cache folder holds `marker`. An alias is resolved
    every time (from a local SQLite store without importing MLflow); `missing` ends the error
    for an alias that names no version."""
    import shutil
    import tempfile

    from mmlab.core import workspace

    text = str(source).strip()

    def ready(uri: str) -> Path | None:
        folder = cache_folder(uri, kind)
        return folder if folder is not None and (folder / marker).is_file() else None

    found = ready(sqlite_alias(text) or text)
    if found is not None:
        return use(found)
    uri = model_uri(source, name)
    if "@" in uri:
        version = version_of(uri)
        if version is None:
            raise LookupError(f"{uri}: no such registered model version {missing}".strip())
        uri = f"models:/{version.name}/{version.version}"
    found = ready(uri)
    if found is not None:
        return use(found)
    cached = cache_folder(uri, kind)
    with tempfile.TemporaryDirectory() as tmp:
        folder = files_in(download(uri, tmp, name))
        if cached is None:
            return use(folder)
        with workspace.atomic_path(cached) as target:
            shutil.copytree(folder, target)
    return use(cached)
