"""Real photographs end to end: `mmlab run params/photos.yaml` from a fresh workspace, and
every notebook on each real format of the fixture (imagefolder without a split column,
Karpathy, COCO with instances)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
# The notebooks of the study (00 compares batches); photo_formats.yaml runs the first four
NOTEBOOKS = [
    "01_feature_extraction",
    "02_fusion_comparison",
    "03_caption_training",
    "04_caption_evaluation",
    "05_cross_modal_retrieval",
    "06_text_to_image",
]

pytestmark = pytest.mark.slow


def _run(batch: Path, home: Path):
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "MMLAB_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
    cli = [sys.executable, "-m", "mmlab", "run", str(batch), "--jobs", "2"]
    done = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True)
    return done, MlflowClient(uri)


def _runs(client: MlflowClient, batch: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`mmlab.batch` = '{batch}'")


def test_photos_batch_finishes_every_notebook_on_real_photos(tmp_path):
    done, client = _run(REPO / "params" / "photos.yaml", tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    runs = {r.data.tags["mmlab.notebook"]: r for r in _runs(client, "photos")}
    assert sorted(runs) == NOTEBOOKS
    assert all(r.info.status == "FINISHED" for r in runs.values())
    for run in runs.values():  # the automatic split is recorded with the dataset
        assert run.data.tags["mmlab.dataset.splits"].startswith("auto 80/10/10")
    evaluation = runs["04_caption_evaluation"].data.metrics
    # grounded against the COCO instances (chair_i is NaN, so not logged, when no object is named)
    assert {"test_cider", "test_chair_s", "test_object_recall"} <= set(evaluation)
    assert "test_colour_error" not in evaluation  # no attribute ground truth for photos
    table = client.download_artifacts(
        runs["02_fusion_comparison"].info.run_id, "accuracy_by_kind.csv", str(tmp_path)
    )
    kinds = set(Path(table).read_text().splitlines()[0].split(",")[1:])
    assert kinds <= {"all", "positive", "other_image", "colour", "count", "object", "spatial"}
    retrieval = runs["05_cross_modal_retrieval"]
    assert "test_text_to_image_recall_at_1" in retrieval.data.metrics
    # the searchable index of the photos, logged and registered as an MLflow model
    assert retrieval.data.tags["mmlab.search_model_uri"].startswith("models:/mmlab-searcher/")
    # no scene truth on photos: the generators train and are logged, unscored, and say so
    generation = runs["06_text_to_image"].data.tags
    assert generation["mmlab.faithfulness"].startswith("not scored")


def test_every_notebook_runs_on_each_real_format(tmp_path):
    done, client = _run(REPO / "tests" / "batches" / "photo_formats.yaml", tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    runs = _runs(client, "photo_formats")
    assert len(runs) == 4 * 3 and all(r.info.status == "FINISHED" for r in runs)
