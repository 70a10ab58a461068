"""What an MLflow experiment says about itself: its notebook's question and its kind.

MLflow 3's UI asks for (or guesses) an experiment's kind and opens GenAI experiments on their
traces; ours are model training, so each experiment gets the tag `mlflow.experimentKind =
custom_model_development` and, as its description (`mlflow.note.content`), the question
the notebook's first cell asks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)


def notebook_file(name: str) -> Path | None:
    """`notebooks/<name>.ipynb` in the workspace, else in the checkout holding mmlab."""
    from mmlab import workspace

    for folder in (
        workspace.root() / "notebooks",
        Path(__file__).resolve().parent.parent / "notebooks",
    ):
        path = folder / f"{name}.ipynb"
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
    from mmlab import tracking

    tags = dict(getattr(experiment, "tags", None) or {})
    wanted = {KIND_TAG: KIND}
    if DESCRIPTION_TAG not in tags:
        path = notebook_file(notebook)
        text = question(path) if path else ""
        if text:
            wanted[DESCRIPTION_TAG] = text
    for key, value in wanted.items():
        if key not in tags:
            tracking.retry(client.set_experiment_tag, experiment.experiment_id, key, value)
