"""Searches with Optuna (`mmlab.batch.tune`): trials through the runner as child runs of one
parent, the best on the parent, a resumed search runs only what its budget lacks, the pruner
interrupts a trial whose curve falls behind. Real kernels on the tiny notebook tune.ipynb."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmlab import cli, tracking
from mmlab.batch import config, launch, runner, tune

pytest.importorskip("optuna")
import optuna  # noqa: E402

HERE = Path(__file__).resolve().parent
BATCH = HERE / "batches" / "tune.yaml"
REPO = HERE.parent


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A workspace and store of this module's own."""
    home = tmp_path_factory.mktemp("tune-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMLAB_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv(tune.STORAGE_ENV, raising=False)
        yield home


@pytest.fixture(scope="module")
def client(home):
    return MlflowClient(tracking.tracking_uri())


@pytest.fixture(scope="module")
def searched(home):
    lines: list[str] = []
    report = launch.run(BATCH, jobs=2, out=lines.append)
    return report, lines


def children(client, parent: str):
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def load_study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=tune.storage_url())


def test_three_trials_are_finished_children_of_one_parent_with_the_best(searched, client, home):
    report, lines = searched
    assert report.ok
    (found,) = report.searches
    kids = children(client, found.parent_run_id)
    assert len(kids) == 3
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert {k.data.tags[tune.STATE_TAG] for k in kids} == {"COMPLETE"}
    assert sorted(int(k.data.tags[tune.TRIAL_TAG]) for k in kids) == [0, 1, 2]
    # each trial ran the values it was asked for, over the stage's own parameters
    assert {k.data.params["epochs"] for k in kids} == {"2"}
    best = max(kids, key=lambda k: k.data.metrics["score"])
    parent = client.get_run(found.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(best.data.metrics["score"])
    assert parent.data.tags["mmlab.best_run_id"] == best.info.run_id
    for name in ("x", "width", "kind"):
        assert parent.data.tags[f"mmlab.best.{name}"].strip('"') == best.data.params[name]
    assert parent.data.params["search.metric"] == "score"
    artifacts = {a.path for a in client.list_artifacts(found.parent_run_id, "search")}
    assert {"search/trials.csv", "search/parallel_coordinates.png"} <= artifacts
    # the study sits beside the store, and trial runs never serve as the runner's cache
    assert (home / "optuna.db").is_file()
    assert all("mmlab.params_hash" not in k.data.tags for k in kids)
    assert any("best value" in line for line in lines)


def test_save_writes_the_best_parameters_with_the_search_that_found_them(searched, home):
    import yaml

    report, _ = searched
    (found,) = report.searches
    assert found.saved == home / "searched" / "best.yaml"
    entry = yaml.safe_load(found.saved.read_text())["entries"]["tiny"]
    assert entry["parameters"] == found.best_params
    search = entry["search"]
    assert search["parent_run_id"] == found.parent_run_id and search["study"] == found.study
    assert search["metric"] == "score" and search["value"] == pytest.approx(found.best_value)
    assert search["trials"] == {"complete": 3}
    # the file is replaced whole and keeps other searches' entries
    document = yaml.safe_load(found.saved.read_text())
    document["entries"]["other"] = {"parameters": {"x": 1.0}}
    found.saved.write_text(yaml.safe_dump(document))
    batch = config.load(BATCH)
    run = tune.SearchRun(batch, "search", 1, "local", lambda line: None)
    run.open()
    try:
        run.save_best(run.study.best_trial, {"COMPLETE": 3})
    finally:
        run.lock.release()
    entries = yaml.safe_load(found.saved.read_text())["entries"]
    assert set(entries) == {"tiny", "other"} and entries["tiny"]["parameters"] == found.best_params
    assert not [p for p in found.saved.parent.iterdir() if p.name.startswith(".")]


def test_a_resumed_search_runs_only_what_its_budget_lacks(searched, client):
    """A killed search leaves a RUNNING trial: the next start marks it FAIL, does not count it,
    and with a budget of 4 runs one trial more, under the same parent."""
    report, _ = searched
    (first,) = report.searches
    study = load_study(first.study)
    left_running = study.ask()  # as a search killed mid-trial leaves it
    again = launch.run(BATCH, jobs=2, out=lambda line: None, trials=4)
    (second,) = again.searches
    assert second.study == first.study and second.parent_run_id == first.parent_run_id
    assert len(second.results) == 1 and again.ok
    states = {t.number: t.state for t in load_study(first.study).trials}
    assert states[left_running.number] == optuna.trial.TrialState.FAIL
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 4
    assert len(children(client, first.parent_run_id)) == 4
    # and a budget already spent runs nothing
    third = launch.run(BATCH, jobs=2, out=lambda line: None, trials=4)
    assert third.searches[0].results == []


def test_a_search_stopped_mid_trial_resumes_with_the_rest(home, client, tmp_path):
    """`mmlab tune` stopped (SIGTERM) while its second trial runs: that trial is FAIL, its run
    KILLED, the parent KILLED; started again, the search runs the two trials it lacks."""
    path = tmp_path / "stopped.yaml"
    path.write_text(
        BATCH.read_text()
        .replace("name: tune", "name: stopped")
        .replace("parameters: {epochs: 2}", "parameters: {epochs: 2, pause: 2.0}")
    )
    path.with_name("notebooks").symlink_to(HERE / "notebooks")
    command = [sys.executable, "-m", "mmlab", "tune", str(path), "search", "--jobs", "1"]
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = optuna.storages.RDBStorage(tune.storage_url())
    complete = optuna.trial.TrialState.COMPLETE
    while True:  # until the first trial is told and the second asked
        assert search.poll() is None, search.stdout.read()
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        name = next((n for n in names if n.startswith("stopped.search.")), None)
        trials = load_study(name).trials if name else []
        if len(trials) == 2 and trials[0].state == complete and trials[1].user_attrs:
            break
        time.sleep(0.2)
    search.send_signal(signal.SIGTERM)
    assert search.wait() == 143
    study = load_study(name)
    assert [t.state for t in study.trials] == [complete, optuna.trial.TrialState.FAIL]
    parent = client.get_run(study.user_attrs[tune.RUN_ATTR])
    assert parent.info.status == "KILLED"
    assert client.get_run(study.trials[1].user_attrs[tune.RUN_ATTR]).info.status == "KILLED"
    again = launch.run(path, jobs=2, out=lambda line: None, only=["search"])
    assert again.ok and len(again.searches[0].results) == 2
    assert sum(t.state == complete for t in load_study(name).trials) == 3
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_trial_behind_the_median_is_interrupted_and_marked_pruned(home, client, tmp_path):
    """The pruner reads the running trial's curve from MLflow and interrupts its kernel."""
    path = tmp_path / "prune.yaml"
    path.write_text(
        BATCH.read_text().replace(
            "      sampler: {name: tpe, seed: 0}\n",
            "      sampler: {name: tpe, seed: 0}\n"
            "      pruner: {name: median, metric: val_score, startup_trials: 2, warmup_steps: 0}\n",
        )
    )
    path.with_name("notebooks").symlink_to(HERE / "notebooks")
    batch = config.load(path)
    search = tune.SearchRun(batch, "search", 1, "local", lambda line: None)
    search.open()
    try:
        for value in (0.8, 0.9):  # two finished trials with good curves
            trial = search.study.ask(search.distributions)
            for step in (1, 2):
                trial.report(value * step / 2, step)
            search.study.tell(trial, value)
        trial = search.study.ask(search.distributions)
        run = client.create_run(client.get_run(search.parent).info.experiment_id)
        client.log_batch(
            run.info.run_id,
            metrics=[tracking_metric("val_score", 0.01, 1), tracking_metric("val_score", 0.02, 2)],
        )
        progress = tmp_path / "progress"
        progress.mkdir()
        ready = progress / "ready"
        kernel = subprocess.Popen([sys.executable, "-c", KERNEL, str(ready)])  # a stand-in
        while not ready.exists():
            time.sleep(0.05)
        (progress / "kernel.pid").write_text(str(kernel.pid))
        result = runner.Result(batch.stages["search"][0], "running", run.info.run_id)
        result.trial, result.progress = trial, progress
        search.watch(result)
        assert result.pruned == 2
        assert kernel.wait() == 42  # it was interrupted
        search.record(result, runner.executors.Outcome(ok=False, error="KeyboardInterrupt"))
        assert result.ok and result.headline == "pruned at step 2"
        assert search.study.trials[trial.number].state == optuna.trial.TrialState.PRUNED
        tags = client.get_run(run.info.run_id).data.tags
        assert tags[tune.STATE_TAG] == "PRUNED" and tags["mmlab.pruned_step"] == "2"
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        search.lock.release()


KERNEL = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: sys.exit(42))
open(sys.argv[1], "w").close()
time.sleep(600)
"""


def tracking_metric(name: str, value: float, step: int):
    from mlflow.entities import Metric

    return Metric(name, value, 0, step)


def test_a_search_held_by_another_process_is_refused(home):
    batch = config.load(BATCH)
    first = tune.SearchRun(batch, "search", 1, "local", lambda line: None)
    first.open()
    try:
        second = tune.SearchRun(batch, "search", 1, "local", lambda line: None)
        with pytest.raises(config.BatchError, match="is running in pid"):
            second.open()
    finally:
        first.lock.release()


def test_cli_tune_refuses_a_stage_without_search_and_a_bad_budget(home, capsys):
    demo = HERE / "batches" / "demo.yaml"
    assert cli.main(["tune", str(demo), "single"]) == 2
    assert "stage 'single' has no 'search' block (stages with one: none)" in capsys.readouterr().err
    assert cli.main(["tune", str(BATCH), "search", "--trials", "0"]) == 2
    assert "--trials 0: expected at least 1" in capsys.readouterr().err


def test_cli_tune_dry_run_prints_the_space(home, capsys):
    assert cli.main(["tune", str(BATCH), "search", "--dry-run", "--trials", "7"]) == 0
    out = capsys.readouterr().out
    assert "search: 7 trials, maximize score, tpe sampler (seed 0)" in out
    assert "x: {'type': 'float', 'low': 0.01, 'high': 1.0, 'log': True}" in out


@pytest.mark.slow
def test_three_trials_of_notebook_02_on_smoke_settings(tmp_path):
    """`mmlab tune params/tune.yaml concat --trials 3` end to end on the smoke settings."""
    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "MMLAB_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_RUN_ID", None)
    smoke = {
        "dataset": "synthetic:n=60,seed=0,image_size=64",
        "device": "cpu",
        "encoders": {"image": "efficientnet_lite0:image_size=64", "text": "tfidf"},
        "epochs": 2,
        "seeds": 1,
    }
    sets = [a for k, v in smoke.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    command = [sys.executable, "-m", "mmlab", "tune", str(REPO / "params" / "tune.yaml")]
    done = subprocess.run(
        [*command, "concat", "--trials", "3", "--jobs", "2", *sets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("02_fusion_comparison").experiment_id],
        filter_string="attributes.run_name = 'concat-search'",
    )
    kids = children(client, parent.info.run_id)
    assert len(kids) == 3 and {k.info.status for k in kids} == {"FINISHED"}
    assert {k.data.tags[tune.STATE_TAG] for k in kids} <= {"COMPLETE", "PRUNED"}
    assert parent.info.status == "FINISHED" and "best_value" in parent.data.metrics
    assert {"mmlab.best.lr", "mmlab.best.hidden"} <= set(parent.data.tags)
