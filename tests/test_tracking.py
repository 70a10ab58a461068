"""Tracking conventions on real MLflow SQLite stores."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mmlab import tracking
from mmlab.core import workspace  # noqa: E402


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One SQLite store for this module (tests use distinct experiment names)."""
    return tmp_path_factory.mktemp("tracking-store")


@pytest.fixture
def store(store_dir, monkeypatch):
    """The module's store, no runner environment, and no run left open afterwards."""
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield uri
    tracking.finish()
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_flatten_nests_and_stringifies():
    flat = tracking.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x", "f": None})
    assert flat == {"a.b": "1", "a.c.d": "[1, 2]", "e": "x", "f": "null"}


def test_start_creates_run_in_notebook_experiment(store, store_dir):
    run = tracking.start(notebook="01_demo", params={"lr": 0.1, "model": {"dim": 8}})
    assert tracking.start(notebook="01_demo", params={"lr": 0.1, "model": {"dim": 8}}) is run
    tracking.log_metrics({"acc": 0.5, "loss": 1.0}, step=3)
    tracking.log_history({"train_loss": [3.0, 2.0, 1.0]})
    tracking.headline("acc", 0.75)
    tracking.finish()

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("01_demo")
    assert exp.artifact_location == (store_dir / "mlartifacts").as_uri() + "/01_demo"
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.1", "model.dim": "8"}
    assert got.data.tags[tracking.HEADLINE_TAG] == "acc"
    assert got.data.tags[tracking.NOTEBOOK_TAG] == "01_demo"
    assert got.data.metrics["acc"] == 0.75
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0)]


def test_changed_params_start_a_fresh_interactive_run(store):
    first = tracking.start(notebook="05_demo", params={"lr": 0.1})
    second = tracking.start(notebook="05_demo", params={"lr": 0.2})
    assert first.info.run_id != second.info.run_id
    assert MlflowClient(store).get_run(first.info.run_id).info.status == "FINISHED"


def test_start_resumes_runner_run_and_leaves_it_open(store, monkeypatch):
    client = MlflowClient(store)
    exp = tracking.experiment_id("02_demo")
    created = client.create_run(exp)
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    run = tracking.start(notebook="02_demo", params={"seed": 1})
    assert run.info.run_id == created.info.run_id
    tracking.finish()
    assert tracking.start(notebook="02_demo", params={"seed": 1}).info.run_id == run.info.run_id
    tracking.finish()
    assert client.get_run(created.info.run_id).info.status == "RUNNING"
    assert client.get_run(created.info.run_id).data.params == {"seed": "1"}
    mlflow.end_run()


def test_child_runs_of_a_runner_run_are_new_runs_under_it(store, monkeypatch):
    """Under the runner (MLFLOW_RUN_ID set), every child is a new run nested under the
    runner's run; the first one used to reopen the runner's run itself, renaming it."""
    client = MlflowClient(store)
    created = client.create_run(tracking.experiment_id("02_demo"), run_name="02_demo")
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    parent = tracking.start(notebook="02_demo")
    children = []
    for name in ("concat-seed0", "concat-seed1"):
        with tracking.child_run(name) as child:
            tracking.log_metrics({"acc": 0.5})
        children.append(child.info.run_id)
    assert created.info.run_id not in children
    for run_id in children:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(created.info.run_id).info.run_name == "02_demo"
    assert "acc" not in client.get_run(created.info.run_id).data.metrics
    tracking.finish()
    mlflow.end_run()


def test_child_runs_nest_and_fail_cleanly(store):
    parent = tracking.start(notebook="03_demo")
    with tracking.child_run("late-seed0", tags={"method": "late"}, params={"seed": 0}) as child:
        tracking.log_metrics({"acc": 0.9})
    with pytest.raises(ValueError), tracking.child_run("broken"):
        raise ValueError("boom")
    assert mlflow.active_run().info.run_id == parent.info.run_id
    tracking.finish()
    client = MlflowClient(store)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    status = {r.info.run_name: r.info.status for r in children}
    assert status == {"late-seed0": "FINISHED", "broken": "FAILED"}
    got = client.get_run(child.info.run_id)
    assert got.data.metrics == {"acc": 0.9} and got.data.params == {"seed": "0"}


def test_artifacts_figure_table_environment_dataset(store):
    run = tracking.start(notebook="04_demo")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    tracking.log_figure(fig, "curve.png")
    plt.close(fig)
    tracking.log_table(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "tables/scores.csv")
    info = tracking.log_environment()
    split = pd.DataFrame({"id": ["1", "2", "3"]})
    tracking.log_dataset({"train": split, "test": split[:1]}, "f" * 64, "tiny")
    with pytest.raises(ValueError, match="unknown format '.xlsx'"):
        tracking.log_table(split, "scores.xlsx")
    tracking.finish()

    client = MlflowClient(store)
    rid = run.info.run_id
    paths = {a.path for a in client.list_artifacts(rid)}
    assert {"curve.png", "tables", "environment"} <= paths
    csv = client.download_artifacts(rid, "tables/scores.csv")
    assert pd.read_csv(csv).to_dict("list") == {"a": [1, 2], "b": ["x", "y"]}
    freeze = open(client.download_artifacts(rid, "environment/requirements.txt")).read()
    assert "mlflow==" in freeze.lower()
    got = client.get_run(rid)
    assert got.data.params["env.device"] == info["device"]
    assert got.data.tags["mmlab.dataset.fingerprint"] == "f" * 64
    inputs = {i.dataset.name: i for i in got.inputs.dataset_inputs}  # one input per split
    assert set(inputs) == {"tiny/train", "tiny/test"}
    assert inputs["tiny/train"].dataset.digest == "f" * 36
    assert {t.key: t.value for t in inputs["tiny/test"].tags}["mlflow.data.context"] == "test"


def test_helpers_need_a_run(store):
    with pytest.raises(RuntimeError, match="tracking.start"):
        tracking.log_metrics({"x": 1.0})


def test_workspace_store_puts_artifacts_in_workspace(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri() == f"sqlite:///{workspace.root() / 'mlflow.db'}"
    assert tracking.default_artifact_root() == workspace.artifact_root()


WRITER = textwrap.dedent(
    """
    import sys
    from mmlab import tracking

    worker = int(sys.argv[1])
    tracking.start(notebook="concurrent", params={"worker": worker})
    tracking.log_history({"loss": [float(worker * 1000 + i) for i in range(200)]})
    for step in range(25):
        tracking.log_metrics({"acc": worker + step / 100}, step=step)
    with tracking.child_run(f"child{worker}", params={"worker": worker}):
        tracking.log_metrics({"child_acc": float(worker)})
    tracking.headline("final", float(worker))
    tracking.finish()
    """
)


def test_six_processes_log_to_one_fresh_sqlite_store_without_losses(tmp_path):
    """Concurrent writers on a store none of them created: no metric lost, all runs FINISHED."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    workers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(w)], env=env, stderr=subprocess.PIPE)
        for w in range(6)
    ]
    errors = [p.communicate()[1].decode() for p in workers]
    assert [p.returncode for p in workers] == [0] * 6, "\n".join(errors)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(int(r.data.params["worker"]) for r in parents) == list(range(6))
    for run in parents:
        worker = int(run.data.params["worker"])
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.value for m in loss) == [worker * 1000.0 + i for i in range(200)]
        assert len(client.get_metric_history(run.info.run_id, "acc")) == 25
        assert run.data.metrics["final"] == worker


def test_describing_an_experiment_another_batch_described_first(store):
    """Two batches started together both read the new experiment without its kind tag; the
    later insert then hits SQLite's UNIQUE constraint, which must not fail the batch."""
    import sqlite3

    from mmlab.tracking import experiments

    path = workspace.sqlite_path(store)

    class Racing(MlflowClient):
        def set_experiment_tag(self, experiment_id, key, value):
            super().set_experiment_tag(experiment_id, key, value)  # the batch beside us
            with sqlite3.connect(path) as db:  # our own insert, a moment later
                db.execute(
                    "INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, ?)",
                    (key, value, experiment_id),
                )

    client = Racing(store)
    exp = client.get_experiment(client.create_experiment("race_demo"))
    experiments.describe(client, exp, "race_demo")
    assert client.get_experiment(exp.experiment_id).tags[experiments.KIND_TAG] == experiments.KIND
