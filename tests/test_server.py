"""The shared tracking server end to end: a real PostgreSQL, a real `mlflow server` started by
`mmlab server`, real batches through `mmlab run`.

1. The smoke batch with --jobs 4 against the server leaves what the same batch leaves in a
   SQLite store (the session's `smoke_batch`): runs, statuses, parameters, metric keys,
   dataset inputs, artifacts per run, logged and registered models.
2. The server killed in the middle of a batch: the runner says so (the server, what to do, no
   traceback), nothing is FINISHED that did not finish, and the rerun after a restart resumes.
3. With `--auth`, a batch without a user is refused at once; with one, it runs.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmlab.ops import postgres

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


class Server:
    """`mmlab server` in a workspace of its own, its PostgreSQL cluster in a folder the
    `postgres` user can reach (pytest's tmp folders are closed to other users)."""

    def __init__(self, home: Path, cluster: Path, *flags: str):
        self.home, self.port, self.flags = home, postgres.free_port(), flags
        self.url = f"http://127.0.0.1:{self.port}"
        self.cluster = postgres.Cluster(cluster)
        self.env = {**os.environ, "MMLAB_HOME": str(home), "MMLAB_POSTGRES_DIR": str(cluster)}
        self.process: subprocess.Popen | None = None
        self.log = home / "server.log"

    def mmlab(self, *args: str, **popen) -> subprocess.Popen:
        command = [sys.executable, "-m", "mmlab", *args]
        return subprocess.Popen(command, cwd=REPO, env=self.env, text=True, **popen)

    def start(self) -> None:
        """Start it on the fixture's port (the same after a restart) and wait until it says
        what to export."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "a") as sink:
            self.process = self.mmlab(
                "server", "--port", str(self.port), *self.flags, stdout=sink, stderr=sink
            )
        ready = f"export MLFLOW_TRACKING_URI={self.url}"
        while ready not in self.log.read_text()[offset:]:
            assert self.process.poll() is None, self.log.read_text()[offset:][-5000:]
            time.sleep(1)

    def kill(self) -> None:
        """Kill the MLflow server outright (its `mmlab server` then stops PostgreSQL)."""
        state = json.loads((self.home / ".mmlab" / "server.json").read_text())
        os.killpg(state["server_pid"], signal.SIGKILL)
        assert self.process.wait() != 0

    def stop(self) -> subprocess.CompletedProcess:
        stopping = self.mmlab("server", "--stop", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = stopping.communicate()
        return subprocess.CompletedProcess(stopping.args, stopping.returncode, output)

    def run(self, batch: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {**self.env, "MLFLOW_TRACKING_URI": self.url, **env}
        command = [sys.executable, "-m", "mmlab", "run", str(batch), *args]
        return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cluster = Path(tempfile.mkdtemp(prefix="mmlab-test-postgres-"))
    served = Server(tmp_path_factory.mktemp("server-home"), cluster)
    served.start()
    yield served
    stopped = served.stop()
    try:
        assert stopped.returncode == 0, stopped.stdout
        assert served.process.wait() == 143  # stopped by SIGTERM, cleaned up as on Ctrl-C
        assert "PostgreSQL stopped" in served.log.read_text()
        assert served.cluster.port() is None, "PostgreSQL still runs after --stop"
    finally:
        shutil.rmtree(cluster, ignore_errors=True)


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def inventory(client: MlflowClient) -> collections.Counter:
    """Everything a batch leaves in a store, without ids or times: one entry per run
    (experiment, name, status, parameter names, metric keys, dataset inputs, artifacts), per
    experiment's logged models, and per registered model (versions, aliases)."""
    found = collections.Counter()
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    for experiment in experiments:
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            inputs = sorted((d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs)
            found[
                (
                    experiment.name,
                    run.info.run_name,
                    run.info.status,
                    tuple(sorted(run.data.params)),
                    tuple(sorted(run.data.metrics)),
                    tuple(inputs),
                    tuple(sorted(_artifacts(client, run.info.run_id))),
                )
            ] += 1
        models = client.search_logged_models([experiment.experiment_id])
        found[(experiment.name, "logged models", len(models))] += 1
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{model.name}'")
        found[(model.name, len(versions), tuple(sorted(model.aliases)))] += 1
    return found


def test_the_smoke_batch_lands_on_the_server_as_in_a_sqlite_store(server, smoke_batch):
    sqlite_done, sqlite_client, _ = smoke_batch
    assert sqlite_done.returncode == 0, sqlite_done.stdout[-3000:] + sqlite_done.stderr[-3000:]
    done = server.run(REPO / "params" / "smoke.yaml", "--jobs", "4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"tracking {server.url}" in done.stdout

    on_server, in_sqlite = inventory(MlflowClient(server.url)), inventory(sqlite_client)
    assert on_server == in_sqlite, (on_server - in_sqlite, in_sqlite - on_server)
    runs = [(key, n) for key, n in on_server.items() if len(key) == 7]
    counted = {
        "runs": sum(n for _, n in runs),
        "metric keys": sum(len(key[4]) * n for key, n in runs),
        "artifacts": sum(len(key[6]) * n for key, n in runs),
        "dataset inputs": sum(len(key[5]) * n for key, n in runs),
    }
    print(f"on the server as in SQLite: {counted}")  # shown with -rP / -s
    assert counted["runs"] >= 20  # six notebooks and their child runs: something was compared
    assert any(key[0] == "mmlab-captioner" and key[1] >= 1 for key in on_server)
    # the artifacts went through the server into its store, not into the workspace
    stored = list((server.home / ".mmlab" / "artifacts").rglob("*.ipynb"))
    assert len(stored) >= 6 and not (server.home / "mlartifacts").exists()


def _statuses(client: MlflowClient, batch: str) -> dict[str, list[str]]:
    """Stage -> statuses of its top-level runs in batch `batch` (any batch id)."""
    found = collections.defaultdict(list)
    for experiment in client.search_experiments():
        runs = client.search_runs(
            [experiment.experiment_id], f"tags.`mmlab.batch` = '{batch}'", max_results=100
        )
        for run in runs:
            found[run.data.tags["mmlab.stage"]].append(run.info.status)
    return dict(found)


def _summary(output: str) -> dict[str, str]:
    """Stage -> status, from the runner's summary table (stage, notebook, parameters, status)."""
    rows = [line.split() for line in output.splitlines()]
    return {row[0]: row[3] for row in rows if len(row) > 3 and row[2] == "-"}


def test_a_server_killed_mid_batch_is_reported_and_the_rerun_resumes(server):
    batch = REPO / "tests" / "batches" / "server_kill.yaml"
    # MLflow retries a call for minutes (a restart in that window loses nothing); here a few
    # seconds do, so the kernels and the runner give up soon after the kill
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    out = server.home / "first.log"
    environment = {**server.env, "MLFLOW_TRACKING_URI": server.url, **quick}
    with open(out, "w") as sink:
        first = subprocess.Popen(
            [sys.executable, "-m", "mmlab", "run", str(batch), "--jobs", "2"],
            cwd=REPO,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    # the executor opens the kernel's log once the runner has created and recorded the run
    started = server.home / "runs" / "server_kill" / "slow" / "epochs.log"
    while not started.exists():
        assert first.poll() is None, out.read_text()
        time.sleep(0.5)
    server.kill()
    assert first.wait() == 1
    output = out.read_text()
    assert "Traceback" not in output
    assert f"the tracking server {server.url} stopped answering" in output
    assert "make server" in output and "rerun the same command" in output
    assert _summary(output) == {"quick": "done", "slow": "failed", "after": "skipped"}

    server.start()  # same port, same database
    client = MlflowClient(server.url)
    before = _statuses(client, "server_kill")
    assert before["quick"] == ["FINISHED"]
    assert "FINISHED" not in before["slow"]  # killed mid-run: RUNNING or FAILED, never done
    assert "after" not in before  # never started

    rerun = server.run(batch, "--jobs", "2")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert _summary(rerun.stdout) == {"quick": "cached", "slow": "done", "after": "done"}
    after = _statuses(client, "server_kill")
    assert after["quick"] == ["FINISHED"] and after["after"] == ["FINISHED"]
    assert after["slow"].count("FINISHED") == 1 and len(after["slow"]) == 2


def test_with_auth_the_server_lets_in_only_a_user_with_a_password(tmp_path_factory, monkeypatch):
    cluster = Path(tempfile.mkdtemp(prefix="mmlab-test-postgres-"))
    served = Server(tmp_path_factory.mktemp("auth-home"), cluster, "--auth")
    password = "a-long-secret-pw"
    served.env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password  # the first start creates the admin
    served.start()
    try:
        batch = REPO / "tests" / "batches" / "epochs.yaml"
        refused = served.run(batch)
        assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert f"the tracking server {served.url} refuses us" in refused.stderr
        assert "MLFLOW_TRACKING_PASSWORD" in refused.stderr and "Traceback" not in refused.stderr
        user = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        done = served.run(batch, **user)  # the kernels get the user from the environment
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        for name, value in user.items():
            monkeypatch.setenv(name, value)
        assert _statuses(MlflowClient(served.url), "epochs") == {"train": ["FINISHED"]}
    finally:
        stopped = served.stop()
        shutil.rmtree(cluster, ignore_errors=True)
    assert stopped.returncode == 0 and served.process.wait() == 143
