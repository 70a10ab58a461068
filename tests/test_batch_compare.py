"""Comparing batches (`mmlab.batch.compare`, notebook 00, `mmlab compare`) on real MLflow runs.

Two batches are written into a temporary SQLite store the way the runner and the notebooks
write them (stage runs tagged with the batch, fusion method x seed nested runs, caption metrics
with the beam as the step); one metric is moved on purpose beyond its interval.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mmlab import tracking
from mmlab.batch import compare as batch_compare

REPO = Path(__file__).resolve().parent.parent
# test accuracy of two fusion methods over three seeds
BASE = {"concat": [0.80, 0.81, 0.79], "gated": [0.70, 0.72, 0.71]}
SHIFTED = {"concat": [0.90, 0.91, 0.92], "gated": [0.71, 0.70, 0.72]}  # concat moved, gated not


def _stage_run(client, notebook, batch, batch_id, stage, metrics=(), params=None):
    experiment = tracking.experiment_id(notebook, client.tracking_uri)
    tags = {
        "mmlab.batch": batch,
        "mmlab.batch_id": batch_id,
        "mmlab.stage": stage,
        "mmlab.execution": stage,
        "mmlab.notebook": notebook,
        "mmlab.git_commit": "abc",
    }
    run = client.create_run(experiment, run_name=stage, tags=tags)
    items = [Metric(name, value, 0, step) for name, value, step in metrics]
    params = [Param(k, v) for k, v in (params or {}).items()]
    client.log_batch(run.info.run_id, metrics=items, params=params)
    return run


def write_batch(uri: str, batch: str, batch_id: str, accuracy: dict, cider: float) -> None:
    client = MlflowClient(uri)
    parent = _stage_run(
        client,
        "02_fusion_comparison",
        batch,
        batch_id,
        "fusion",
        [("best_test_accuracy", max(map(max, accuracy.values())), 0)],
    )
    for method, values in accuracy.items():
        for seed, value in enumerate(values):
            tags = {
                "mlflow.parentRunId": parent.info.run_id,
                "fusion_method": method,
                "seed": str(seed),
            }
            child = client.create_run(
                parent.info.experiment_id, run_name=f"{method}-seed{seed}", tags=tags
            )
            metrics = [Metric("test_accuracy", value, 0, 0), Metric("train_seconds", 9.0, 0, 0)]
            client.log_batch(child.info.run_id, metrics=metrics)
            client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    features = _stage_run(
        client,
        "01_feature_extraction",
        batch,
        batch_id,
        "features",
        [("probe.first_shape.image.small_cnn", 0.6, 0), ("items_per_s.image.small_cnn", 100.0, 0)],
    )
    client.set_terminated(features.info.run_id)
    train = _stage_run(
        client,
        "03_caption_training",
        batch,
        batch_id,
        "train",
        [("test_cider", cider, 1), ("test_cider", cider + 0.1, 3), ("best_val_cider", cider, 0)],
        params={"decoder": "transformer"},
    )
    client.set_terminated(train.info.run_id)
    retrieval = _stage_run(
        client,
        "05_cross_modal_retrieval",
        batch,
        batch_id,
        "retrieval",
        [("recall_at_1/text_to_image", 0.3, 0)],
    )
    client.set_terminated(retrieval.info.run_id)


@pytest.fixture()
def two_batches(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MMLAB_HOME", str(tmp_path))
    write_batch(uri, "nightly", "20261201-010000-aaaaaa", BASE, cider=1.0)
    write_batch(uri, "nightly", "20261202-010000-bbbbbb", SHIFTED, cider=1.5)
    return uri


def test_flags_the_metric_moved_beyond_its_interval_and_leaves_the_other(two_batches):
    batches = batch_compare.resolve(["20261201-010000-aaaaaa", "20261202-010000-bbbbbb"])
    report = batch_compare.compare(batches)
    fusion = report.section("fusion methods")
    verdicts = fusion.iloc[:, -1]
    assert verdicts[("concat", "test_accuracy")] == "moved up"
    assert verdicts[("gated", "test_accuracy")] == "within CI"
    moved = report.moved()
    assert list(zip(moved["key"], moved["metric"], strict=True)) == [("concat", "test_accuracy")]
    # single values (one run per batch) are shown, with no interval, and never flagged alone
    captions = report.section("caption training")
    assert captions.loc[("transformer beam 3", "cider")].iloc[-1] == "no interval"
    assert captions.loc[("transformer beam 3", "cider")].iloc[1].startswith("1.6")
    assert "probe first_shape" in report.section("feature probes").index.get_level_values(1)
    # a notebook without a reader of its own (retrieval) is read by metric-name prefix
    assert ("recall", "recall_at_1/text_to_image") in report.section(
        "05_cross_modal_retrieval"
    ).index
    # machine-dependent costs are left out
    assert not report.summary["metric"].str.contains("seconds|per_s").any()
    page = report.to_html()
    assert 'class="moved-up">moved up' in page and "Moved beyond their 95% intervals (1)" in page


def test_a_batch_name_takes_the_newest_run_of_each_execution(two_batches):
    (batch,) = batch_compare.resolve(["nightly"])
    assert batch.kind == "name" and len(batch.runs) == 4
    assert set(batch.runs["tags.mmlab.batch_id"]) == {"20261202-010000-bbbbbb"}


def test_an_unknown_batch_lists_the_known_ones(two_batches):
    with pytest.raises(
        batch_compare.BatchNotFound,
        match="batch names: nightly; newest ids: 20261202-010000-bbbbbb, 20261201-010000-aaaaaa",
    ):
        batch_compare.resolve(["nightly", "yesterday"])
    with pytest.raises(batch_compare.BatchNotFound, match="expected a batch name or id"):
        batch_compare.resolve(["x' or 1=1"])


@pytest.mark.slow
def test_mmlab_compare_runs_notebook_00_and_logs_the_html_report(two_batches, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "report.html"
    cli = [
        sys.executable,
        "-m",
        "mmlab",
        "compare",
        "20261201-010000-aaaaaa",
        "20261202-010000-bbbbbb",
        "--out",
        str(out),
    ]
    done = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 metric moved" in done.stdout, done.stdout[-2000:]
    assert 'class="moved-up">moved up' in out.read_text()
    client = MlflowClient(two_batches)
    experiment = client.get_experiment_by_name(batch_compare.REPORT_NOTEBOOK)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["metrics_moved"] == 1
    assert "compare_report.html" in [a.path for a in client.list_artifacts(run.info.run_id)]
    # comparing again runs again (never a cached report of older runs)
    again = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and len(client.search_runs([experiment.experiment_id])) == 2
    bad = subprocess.run([*cli[:4], "nope"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "batch 'nope'" in bad.stderr and "Traceback" not in bad.stderr
