"""What an MLflow experiment says about itself: the tag `mlflow.experimentKind =
custom_model_development` (MLflow 3's UI would open it on traces) and, as its description,
the question its notebook's first cell asks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlflow.exceptions import MlflowException

from mmlab.tracking.store import client, default_artifact_root, retry

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)


def notebook_file(name: str) -> Path | None:
    """`notebooks/<name>.ipynb` in the workspace, else in the checkout holding mmlab."""
    from mmlab.core import workspace

    for folder in (workspace.root(), Path(__file__).resolve().parents[2]):
        path = folder / "notebooks" / f"{name}.ipynb"
        if path.is_file():
            return path
    return None


def question(path: Path) -> str:
    """The question of a notebook: the bold sentence of its first markdown cell (else its first
    line that is not a heading); "" when there is none."""
    try:
        cells = json.loads(path.read_text()).get("cells", [])
    except (OSError, ValueError):
        return ""
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        text = "".join(cell.get("source", []))
        bold = _BOLD.search(text)
        if bold:
            return " ".join(bold.group(1).split())
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return next((line for line in lines if not line.startswith("#")), "")
    return ""


def describe(client, experiment, notebook: str) -> None:
    """Set the kind and description tags an experiment lacks (an edited description stays)."""
    tags = dict(getattr(experiment, "tags", None) or {})
    wanted = {KIND_TAG: KIND}
    if DESCRIPTION_TAG not in tags:
        path = notebook_file(notebook)
        text = question(path) if path else ""
        if text:
            wanted[DESCRIPTION_TAG] = text
    for key, value in wanted.items():
        if key in tags:
            continue
        try:
            retry(client.set_experiment_tag, experiment.experiment_id, key, value)
        except Exception:  # a batch started beside this one set it first (UNIQUE constraint)
            now = retry(client.get_experiment, experiment.experiment_id).tags or {}
            if key not in now:
                raise


def experiment_id(name: str, uri: str | None = None) -> str:
    """The id of the experiment `name`, created (artifacts beside a SQLite store) if missing."""
    mlf = client(uri)
    found = retry(mlf.get_experiment_by_name, name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            retry(mlf.restore_experiment, found.experiment_id)
        describe(mlf, found, name)
        return found.experiment_id
    root = default_artifact_root(uri)
    location = f"{root}/{name}" if root else None
    try:
        created = retry(mlf.create_experiment, name, artifact_location=location)
    except MlflowException as error:  # another process created it first
        found = retry(mlf.get_experiment_by_name, name)
        if found is None:
            raise error
        created = found.experiment_id
    describe(mlf, retry(mlf.get_experiment, created), name)
    return created
