"""The Ray executor: the `resources` key, the executor registry's errors, and (slow) real Ray.

The slow tests start real Ray instances on 127.0.0.1: one started by the runner itself (no
`--address`), one started by another process and joined with `--address`, and the smoke
batch through the CLI. Nothing of Ray, MLflow or Papermill is mocked.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mmlab import cli
from mmlab.batch import config, executors, job, launch, runner
from mmlab.batch.config import BatchError
from mmlab.batch.executors import ray as ray_executor

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BATCH = HERE / "batches" / "ray.yaml"
OK = str(HERE / "notebooks" / "ok.ipynb")


# --------------------------------------------------------------------------- fast


def load_stage(tmp_path: Path, **stage) -> config.Execution:
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump({"stages": {"a": {"notebook": OK, **stage}}}))
    return config.load(path).stages["a"][0]


def test_resources_default_and_given(tmp_path):
    assert load_stage(tmp_path).resources == job.Resources(cpus=1, gpus=0)
    given = load_stage(tmp_path, resources={"cpus": 2, "gpus": 0.5})
    assert given.resources == job.Resources(cpus=2, gpus=0.5)
    batch = config.load(BATCH)
    assert batch.stages["single"][0].resources.cpus == 2
    assert batch.stages["gpu"][0].resources.gpus == 1


def test_bad_resources_are_all_reported_with_file_stage_and_key(tmp_path):
    path = tmp_path / "batch.yaml"
    stages = {
        "a": {"notebook": OK, "resources": {"cpu": 2}},
        "b": {"notebook": OK, "resources": {"cpus": "two", "gpus": -1}},
        "c": {"notebook": OK, "resources": {"cpus": 0}},
        "d": {"notebook": OK, "resources": 4},
        "e": {"notebook": OK, "resources": {"gpus": True}},
    }
    path.write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(BatchError) as info:
        config.load(path)
    lines = str(info.value).splitlines()
    expected = [
        "stage 'a': key 'resources.cpu': unknown key",
        "stage 'b': key 'resources.cpus': Input should be a valid number",
        "stage 'b': key 'resources.gpus': Input should be greater than or equal to 0",
        "stage 'c': key 'resources.cpus': Input should be greater than 0",
        "stage 'd': key 'resources'",
        "stage 'e': key 'resources.gpus': Input should be a valid number",
    ]
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"{path}: ") and want in line, (line, want)


def test_registry_errors_name_what_is_available():
    assert executors.names() == ["local", "ray"]
    with pytest.raises(
        executors.ExecutorError, match="unknown executor 'nope'; valid names: local, ray"
    ):
        executors.create("nope", 1)
    with pytest.raises(executors.ExecutorError, match="executor 'local' takes no option 'address'"):
        executors.create("local", 1, address="auto")


def test_cli_reports_an_option_the_executor_does_not_take(capsys):
    argv = ["run", str(HERE / "batches" / "demo.yaml"), "--address", "auto"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "mmlab run: error: executor 'local' takes no option 'address'" in err
    assert "Traceback" not in err


def test_without_ray_installed_the_error_names_the_extra(tmp_path):
    """`ray` made unimportable (None in sys.modules is how Python blocks an import)."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from mmlab import cli\n"
        f"sys.exit(cli.main(['run', {str(HERE / 'batches' / 'demo.yaml')!r}, '--executor', 'ray']))"
    )
    env = {
        **os.environ,
        "MMLAB_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "--executor ray needs ray, which is not installed: pip install 'mmlab[ray]'" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_addresses_and_stores():
    assert ray_executor.remote_address(None) is None
    assert ray_executor.remote_address("auto") is None
    assert ray_executor.remote_address("ray://127.0.0.1:10001") is None
    assert ray_executor.remote_address("localhost:6379") is None
    assert ray_executor.remote_address("ray://head.example:10001") == "head.example"
    assert ray_executor.remote_address("10.1.2.3:6379") == "10.1.2.3"
    here = ["sqlite:////srv/mlflow.db", "sqlite:///mlflow.db", "/srv/mlruns", "file:///srv/mlruns"]
    here += ["http://127.0.0.1:5000", "http://localhost:5000"]
    shared = ["http://mlflow:5000", "https://mlflow.example", "databricks"]
    assert all(ray_executor.only_here(uri) for uri in here)
    assert not any(ray_executor.only_here(uri) for uri in shared)


def test_a_remote_cluster_with_a_local_store_is_refused_before_connecting(tmp_path, monkeypatch):
    pytest.importorskip("ray")  # part of mmlab[all]; this checks our refusal, not Ray
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(executors.ExecutorError) as info:
        executors.create("ray", 2, address="ray://head.example:10001")
    message = str(info.value)
    assert "which only the machine running `mmlab run` reaches" in message
    assert "workers of the cluster at head.example" in message and "mmlab server" in message


def test_the_shipped_checkout_leaves_out_workspace_files(tmp_path):
    """Packed by Ray's own packaging (what `working_dir` uploads), without a cluster."""
    pytest.importorskip("ray")
    from ray._private.runtime_env.packaging import create_package

    files = [
        "pyproject.toml",
        "notebooks/a.ipynb",
        "mmlab/__init__.py",
        "mmlab/data/__init__.py",
        "params/x.yaml",
        "runs/x/a/a.ipynb",
        "data/set/1.png",
        "cache/f.parquet",
        "mlflow.db",
        "mlartifacts/1/f.png",
        ".venv/bin/python",
        ".git",
        "mmlab/__pycache__/x.pyc",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    env = ray_executor.runtime_env(tmp_path)
    assert env["working_dir"] == str(tmp_path)
    package = tmp_path.parent / "package.zip"
    # newer Ray can be told to skip .gitignore (on by default); older Ray always reads it
    takes = inspect.signature(create_package).parameters
    gitignore = {"include_gitignore": True} if "include_gitignore" in takes else {}
    create_package(str(tmp_path), package, excludes=env["excludes"], **gitignore)
    with zipfile.ZipFile(package) as archive:
        shipped_files = {n for n in archive.namelist() if not n.endswith("/")}
    assert shipped_files == {
        "pyproject.toml",
        "notebooks/a.ipynb",
        "mmlab/__init__.py",
        "mmlab/data/__init__.py",
        "params/x.yaml",
    }


# --------------------------------------------------------------------------- the task's body


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def test_the_task_body_runs_a_job_here_and_returns_its_files(home, monkeypatch):
    """`run_task` called in this process, in the folder where Ray starts a worker (its copy
    of the checkout): a real kernel, a real run; the job's environment does not leak."""
    from mmlab import tracking
    from mmlab.core import progress

    batch_run = runner.BatchRun(config.load(BATCH), 1, ["where"], False, "ray", print)
    result = batch_run.results[0]
    job = batch_run.prepare(result)
    monkeypatch.chdir(REPO)
    before = dict(os.environ)
    try:
        outcome, files = ray_executor.run_task(job, "tests/notebooks/where.ipynb")
    finally:
        batch_run.release(result)
    assert dict(os.environ) == before
    assert outcome.ok, outcome.error
    assert set(files) == {".ipynb", ".html", ".log"} and b"kernel.mmlab" in files[".ipynb"]
    tags = tracking.client().get_run(job.run_id).data.tags
    # on the driver's machine: the workspace's own home, and progress where the runner reads it
    assert tags["kernel.home"] == str(home)
    assert tags["kernel.progress"] == job.env[progress.ENV]
    assert tags["kernel.cwd"] == str(REPO / "tests" / "notebooks")


def test_the_task_body_elsewhere_refuses_a_store_only_this_machine_reaches(home):
    from mmlab.core import progress

    batch_run = runner.BatchRun(config.load(BATCH), 1, ["where"], False, "ray", print)
    result = batch_run.results[0]
    job = batch_run.prepare(result)
    batch_run.release(result)  # removes the progress folder: the task runs "elsewhere"
    assert not Path(job.env[progress.ENV]).exists()
    outcome, files = ray_executor.run_task(job, "tests/notebooks/where.ipynb")
    assert not outcome.ok and files == {}
    assert f"MLFLOW_TRACKING_URI is {job.tracking_uri}, which only the machine" in outcome.error
    assert "this Ray worker must write to it" in outcome.error


# --------------------------------------------------------------------------- slow: real Ray


def shipped(path: str) -> bool:
    """A path inside a copy Ray unpacked for a job's `working_dir`, not the checkout itself."""
    return "working_dir_files" in path and not path.startswith(str(REPO) + os.sep)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 (`ray start --head --block`), in a session and a folder of its
    own, without this test's PYTHONPATH: its workers get mmlab only through the upload.
    SIGTERM stops it and every Ray process it started."""
    pytest.importorskip("ray")
    port = free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    command = [
        str(ray_cli),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Ray restarts a worker that takes over 60 s to register; a busy CI machine can be slower
    env["RAY_worker_register_timeout_seconds"] = "600"
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            command,
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"the Ray head did not start:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:  # its own session: nothing else is in the group
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow
def test_a_batch_on_a_ray_cluster_by_address_then_resumed(home, ray_head):
    lines: list[str] = []
    stages = ["where", "grid", "single", "consume", "fail", "after_fail", "crash", "epochs"]
    options = {"address": ray_head}
    report = launch.run(
        BATCH,
        jobs=2,
        only=stages,
        executor="ray",
        executor_options=options,
        out=lines.append,
        progress_every=0.5,
    )
    text = "\n".join(lines)
    status = {label: r.status for label, r in report.by_label().items()}
    assert status == {
        "where": "done",
        "grid[x=1]": "done",
        "grid[x=2]": "done",
        "single": "done",
        "consume": "done",
        "fail": "failed",
        "after_fail": "skipped",
        "crash": "failed",
        "epochs": "done",
    }, text
    assert f"executions run on ray at {ray_head} (1 nodes, 2 CPUs)" in text
    results = report.by_label()
    assert "ValueError: boom 1" in results["fail"].error
    assert "needs 'fail', which failed" in results["after_fail"].error
    assert "DeadKernelError" in results["crash"].error
    assert "upstream_value=10" in results["consume"].headline  # ${single.run_id} reached it
    # a training loop's epochs reach the runner from a Ray worker on this machine
    assert any(line.startswith("  ... epochs ") and "toy epoch" in line for line in lines), text

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = {label: client.get_run(r.run_id) for label, r in results.items() if r.run_id}
    assert {label: run.info.status for label, run in runs.items()} == {
        "where": "FINISHED",
        "grid[x=1]": "FINISHED",
        "grid[x=2]": "FINISHED",
        "single": "FINISHED",
        "consume": "FINISHED",
        "fail": "FAILED",
        "crash": "FAILED",
        "epochs": "FINISHED",
    }
    # the kernel imported the mmlab Ray shipped, with this workspace and live progress
    where = runs["where"].data.tags
    assert shipped(where["kernel.mmlab"]) and shipped(where["kernel.cwd"]), where
    assert where["kernel.home"] == str(home) and where["kernel.progress"], where
    # a kernel uses the cores its task holds
    assert runs["single"].data.tags["kernel.omp_num_threads"] == "2"
    assert runs["grid[x=1]"].data.tags["kernel.omp_num_threads"] == "1"
    # the executed notebooks came back to this workspace and are attached to their runs
    for stem in ("where/where", "fail/fail", "epochs/epochs", "grid/x=2"):
        for suffix in (".ipynb", ".html", ".log"):
            assert (home / "runs" / "ray" / f"{stem}{suffix}").is_file(), (stem, suffix)
    attached = {a.path for a in client.list_artifacts(runs["fail"].info.run_id, "notebook")}
    assert {"notebook/fail.ipynb", "notebook/fail.html", "notebook/fail.log"} <= attached

    again = launch.run(
        BATCH, jobs=2, only=stages, executor="ray", executor_options=options, out=lines.append
    )
    resumed = {label: r.status for label, r in again.by_label().items()}
    assert resumed == {**status, **{k: "cached" for k, v in status.items() if v == "done"}}
    assert again.by_label()["where"].run_id == results["where"].run_id


@pytest.mark.slow
def test_a_local_instance_fails_at_once_what_it_can_never_run(home):
    """No --address: the runner starts (and stops) a local instance with --jobs CPUs."""
    pytest.importorskip("ray")
    lines: list[str] = []
    report = launch.run(BATCH, jobs=2, only=["gpu"], executor="ray", out=lines.append)
    assert "executions run on ray (a local instance, 2 CPUs)" in lines
    (gpu,) = report.results
    assert gpu.status == "failed"
    assert "resources.gpus=1, the local Ray instance has 0" in gpu.error, gpu.error
    assert "--address" in gpu.error


@pytest.mark.slow
def test_smoke_batch_on_ray_through_the_cli(tmp_path):
    """The issue's bar: `mmlab run params/smoke.yaml --executor ray` exits 0, all FINISHED."""
    pytest.importorskip("ray")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MMLAB_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": uri,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cli_args = [sys.executable, "-m", "mmlab", "run", str(REPO / "params" / "smoke.yaml")]
    done = subprocess.run(
        [*cli_args, "--executor", "ray", "--jobs", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"}  # nested sweep runs included
    stage_runs = [r for r in runs if "mmlab.stage" in r.data.tags]
    stages = config.load(REPO / "params" / "smoke.yaml").stages
    assert sorted(r.data.tags["mmlab.stage"] for r in stage_runs) == sorted(stages)
    for run in stage_runs:
        attached = {Path(a.path).suffix for a in client.list_artifacts(run.info.run_id, "notebook")}
        assert {".ipynb", ".html", ".log"} <= attached, run.data.tags["mmlab.stage"]
    assert "executions run on ray (a local instance, 2 CPUs)" in done.stdout
