"""Two `mmlab run` processes on one workspace and one store, started together.

Each execution's output is claimed while it runs: the runner that comes second waits for it
and takes the finished run from the cache. Both exit 0, every run is FINISHED, every
execution ran once and every executed notebook is whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient

HERE = Path(__file__).resolve().parent
BATCH = HERE / "batches" / "concurrent.yaml"


@pytest.mark.slow
def test_two_batches_started_together_both_finish(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env.update(MMLAB_HOME=str(tmp_path), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    command = [sys.executable, "-m", "mmlab.cli", "run", str(BATCH), "--jobs", "2"]
    runners = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [runner.communicate()[0] for runner in runners]
    assert [r.returncode for r in runners] == [0, 0], "\n\n".join(outputs)

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert runs and {r.info.status for r in runs} == {"FINISHED"}
    # each execution ran in one runner; the other showed it as cached (or waited for it)
    labels = [r.data.tags["mmlab.stage"] + r.data.tags["mmlab.execution"] for r in runs]
    assert sorted(labels) == sorted(set(labels)) and len(labels) == 4
    assert (
        sum(
            line.split()[1] == "done"
            for o in outputs
            for line in o.splitlines()
            if line.startswith("[")
        )
        == 4
    )
    for path in (tmp_path / "runs" / "concurrent").rglob("*.ipynb"):
        nbformat.validate(nbformat.read(path, as_version=4))
    leftovers = list((tmp_path / "runs").rglob("*.tmp"))
    assert not leftovers
