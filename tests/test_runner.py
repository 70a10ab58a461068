"""The runner on small notebooks: real Papermill kernels, a real MLflow SQLite store.

One batch (tests/batches/demo.yaml) is executed once per module and inspected by several
tests: grid expansion, needs ordering, `${stage.run_id}`, a failure with a dependent, a killed
kernel, parallel jobs. Re-runs check caching and `--force`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient

from mmlab import cli, tracking
from mmlab.batch import launch, runner

HERE = Path(__file__).resolve().parent
DEMO = HERE / "batches" / "demo.yaml"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A workspace and store of this module's own (the cache must not see other runs)."""
    home = tmp_path_factory.mktemp("runner-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMLAB_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        yield home


@pytest.fixture(scope="module")
def demo(home):
    lines: list[str] = []
    report = launch.run(DEMO, jobs=2, out=lines.append)
    return report, lines


@pytest.fixture(scope="module")
def client(home):
    return MlflowClient(tracking.tracking_uri())


def runs_of(report):
    return {label: r for label, r in report.by_label().items()}


def test_statuses_summary_and_exit(demo):
    report, lines = demo
    status = {label: r.status for label, r in runs_of(report).items()}
    assert status == {
        "grid[x=1]": "done",
        "grid[x=2]": "done",
        "single": "done",
        "consume": "done",
        "fail": "failed",
        "after_fail": "skipped",
        "crash": "failed",
    }
    assert not report.ok
    text = "\n".join(lines)
    assert "ValueError: boom 1" in text and "needs 'fail', which failed" in text
    header = next(line for line in lines if line.startswith("stage "))
    assert header.split()[:6] == ["stage", "notebook", "parameters", "status", "time", "mlflow"]
    grid_row = next(line for line in lines if line.startswith("grid ") and "x=2" in line)
    assert "done" in grid_row and runs_of(report)["grid[x=2]"].run_id in grid_row
    assert "value=4" in grid_row  # the notebook's declared headline metric


def test_grid_runs_land_in_mlflow_with_tags_and_notebooks(demo, client, home):
    report, _ = demo
    for x in (1, 2):
        result = runs_of(report)[f"grid[x={x}]"]
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"x": str(x), "label": "base", "work": "0"}
        tags = run.data.tags
        assert tags["mmlab.batch"] == "demo" and tags["mmlab.batch_id"] == report.batch_id
        assert tags["mmlab.stage"] == "grid" and tags["mmlab.notebook_path"].endswith("ok.ipynb")
        assert len(tags["mmlab.git_commit"]) in (40, 7) and tags["mmlab.git_dirty"] in (
            "true",
            "false",
        )
        assert tags["mmlab.params_hash"] and tags["mmlab.code_hash"]
        assert tags["kernel.omp_num_threads"] == str(max(1, (os.cpu_count() or 1) // 2))
        assert client.get_experiment(run.info.experiment_id).name == "ok"
        assert (home / "runs" / "demo" / "grid" / f"x={x}.ipynb").is_file()
        assert (home / "runs" / "demo" / "grid" / f"x={x}.html").is_file()
        artifacts = {a.path for a in client.list_artifacts(result.run_id, "notebook")}
        assert artifacts == {f"notebook/x={x}.{ext}" for ext in ("ipynb", "html", "log")}


def test_reference_resolves_to_the_needed_stage_run_after_it_finished(demo, client):
    report, _ = demo
    single, consume = runs_of(report)["single"], runs_of(report)["consume"]
    run = client.get_run(consume.run_id)
    assert run.data.params == {"upstream": single.run_id}
    assert run.data.metrics["upstream_value"] == 10.0
    assert consume.headline == "upstream_value=10"
    single_end = client.get_run(single.run_id).info.end_time
    assert run.info.start_time >= single_end  # needs ordering: created only after it finished


def test_failing_notebook_is_failed_with_traceback_attached(demo, client):
    report, _ = demo
    failed = runs_of(report)["fail"]
    run = client.get_run(failed.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mmlab.error"] == "ValueError: boom 1"
    executed = client.download_artifacts(failed.run_id, "notebook/fail.ipynb")
    nb = nbformat.read(executed, as_version=4)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert errors and errors[0]["evalue"] == "boom 1" and errors[0]["traceback"]
    assert runs_of(report)["after_fail"].run_id == ""  # never started


def test_killed_kernel_is_a_failure(demo, client):
    report, _ = demo
    crash = runs_of(report)["crash"]
    assert "DeadKernelError" in crash.error
    assert client.get_run(crash.run_id).info.status == "FAILED"


def test_parallel_jobs_overlap(demo, home):
    """With --jobs 2 the two grid executions ran at the same time (Papermill's timestamps)."""
    spans = []
    for x in (1, 2):
        nb = nbformat.read(home / "runs" / "demo" / "grid" / f"x={x}.ipynb", as_version=4)
        pm = nb.metadata.papermill
        spans.append((datetime.fromisoformat(pm.start_time), datetime.fromisoformat(pm.end_time)))
    assert max(s for s, _ in spans) < min(e for _, e in spans)


def test_rerun_uses_cache_and_force_reruns(demo, client):
    report, _ = demo
    first = runs_of(report)
    lines: list[str] = []
    again = launch.run(DEMO, jobs=2, only=["consume", "grid"], out=lines.append)
    status = {label: (r.status, r.run_id) for label, r in runs_of(again).items()}
    assert status == {
        label: ("cached", first[label].run_id)
        for label in ("grid[x=1]", "grid[x=2]", "single", "consume")
    }
    assert again.ok and any("cached" in line and "grid[x=1]" in line for line in lines)


def test_cli_force_reruns_and_failure_exits_non_zero(demo, client, capsys):
    """`mmlab run --only single --only crash --force`: single re-runs despite its cache,
    the dead kernel fails again, and the command exits 1."""
    report, _ = demo
    argv = ["run", str(DEMO), "--only", "single", "--only", "crash", "--force", "--jobs", "2"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    single_row = next(line for line in out.splitlines() if line.startswith("single "))
    assert " done " in single_row and runs_of(report)["single"].run_id not in single_row
    new_id = single_row.split()[5]
    assert client.get_run(new_id).info.status == "FINISHED"
    assert any(line.startswith("crash ") and "DeadKernelError" in line for line in out.splitlines())


def test_dry_run_prints_plan_without_running(home, client):
    lines: list[str] = []
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert launch.run(DEMO, dry_run=True, overrides=["x=9"], out=lines.append) is None
    text = "\n".join(lines)
    assert "grid[x=1]" not in text and "x=9" in text  # --set pins the grid axis
    assert "${single.run_id}" in text and "needs single" in text
    after = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert before == after


def test_plain_papermill_run_starts_its_own_run(home, client, tmp_path):
    """By hand, with no runner environment, the notebook creates its run in the store."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    papermill = Path(sys.executable).parent / "papermill"
    out = tmp_path / "out.ipynb"
    notebook = HERE / "notebooks" / "ok.ipynb"
    cmd = [str(papermill), str(notebook), str(out), "-p", "x", "21", "--cwd", str(notebook.parent)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    exp = client.get_experiment_by_name("ok")
    runs = client.search_runs([exp.experiment_id], filter_string="params.x = '21'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["value"] == 42.0
    assert "mmlab.batch" not in run.data.tags


def test_a_lone_execution_gets_every_core(demo, client, home):
    """Kernels split the cores among the executions that can run at once: one execution
    alone (here `--only single`) is not held to half of them by `--jobs 2`. The temporary
    folder a killed runner left beside the notebook is swept."""
    stale = home / "runs" / "demo" / "single" / ".ok.ipynb.killed.tmp"
    stale.mkdir(parents=True)
    (stale / "ok.ipynb").write_text("half written")
    report = launch.run(DEMO, jobs=2, only=["single"], force=True, out=lambda line: None)
    assert not stale.exists()
    assert (home / "runs" / "demo" / "single" / "ok.ipynb").is_file()
    run = client.get_run(runs_of(report)["single"].run_id)
    assert run.data.tags["kernel.omp_num_threads"] == str(os.cpu_count() or 1)


def test_a_cell_past_the_stage_timeout_fails_the_execution(home, client):
    """`timeout:` in a stage bounds each cell: a hung notebook fails (and frees its job)
    instead of holding the batch forever; its notebook is still saved."""
    lines: list[str] = []
    report = launch.run(HERE / "batches" / "timeout.yaml", jobs=1, out=lines.append)
    result = runs_of(report)["slow"]
    assert result.status == "failed" and not report.ok
    assert "Timeout" in "\n".join(lines)
    assert client.get_run(result.run_id).info.status == "FAILED"
    assert (home / "runs" / "timeout" / "slow" / "ok.ipynb").is_file()


def test_plain_papermill_and_the_runner_log_the_same_parameters(demo, client, tmp_path):
    """The runner logs every parameter of an execution (the parameters cell's defaults under
    the batch's values); a plain papermill run with the same values logs the same set, read
    by `tracking.start` from the kernel (the notebook lists its parameters once)."""
    report, _ = demo
    by_runner = client.get_run(runs_of(report)["single"].run_id).data.params
    assert by_runner == {"x": "5", "label": "base", "work": "0"}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    notebook = HERE / "notebooks" / "ok.ipynb"
    cmd = [
        str(Path(sys.executable).parent / "papermill"),
        str(notebook),
        str(tmp_path / "o.ipynb"),
        "-p",
        "x",
        "5",
        "-p",
        "label",
        "base",
        "--cwd",
        str(notebook.parent),
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    exp = client.get_experiment_by_name("ok")
    runs = client.search_runs([exp.experiment_id], filter_string="params.x = '5'")
    (plain,) = [r for r in runs if "mmlab.batch" not in r.data.tags]
    assert plain.data.params == by_runner


def test_progress_lines_show_the_cell_and_the_epoch_and_a_held_output_waits(home, client):
    """Not on a terminal, the runner prints each running execution's current cell and latest
    epoch (from the training loop's EpochBar) every `progress_every` seconds. An output that
    another process holds makes the execution wait for it, then run."""
    import threading

    from mmlab.batch import config
    from mmlab.core import workspace

    batch = config.load(HERE / "batches" / "epochs.yaml")
    output = runner.output_path(batch, batch.stages["train"][0])
    held = workspace.claim(output, "pid 1 on elsewhere, batch other")
    threading.Timer(3.0, held.release).start()
    lines: list[str] = []
    report = launch.run(
        HERE / "batches" / "epochs.yaml", jobs=1, out=lines.append, progress_every=0.5
    )
    assert report.ok, lines
    text = "\n".join(lines)
    assert "waiting" in text and "is held by pid 1 on elsewhere, batch other" in text
    progress = [line for line in lines if line.startswith("  ... train ")]
    assert any("cell 5/6" in line for line in progress), lines  # the loop (after the injected cell)
    assert any(
        "toy epoch" in line and "/4 loss" in line and "val_accuracy" in line for line in progress
    ), lines
    assert client.get_run(runs_of(report)["train"].run_id).data.params == {
        "epochs": "4",
        "pause": "1.0",
    }


def test_a_kernel_that_never_answers_is_replaced_before_any_cell_runs(home, tmp_path, monkeypatch):
    """Kernels launched together can race and one never answers (papermill#239): the job
    starts another kernel instead of failing the execution. Here a real kernelspec whose first
    launch hangs before starting ipykernel, and whose second launch is a plain ipykernel."""
    import json

    from mmlab.batch import job as jobs
    from mmlab.batch import kernels

    marker = tmp_path / "launched-once"
    launcher = tmp_path / "flaky_kernel.py"
    launcher.write_text(
        "import pathlib, runpy, sys, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    time.sleep(600)\n"
        "runpy.run_module('ipykernel_launcher', run_name='__main__')\n"
    )
    spec = tmp_path / "jupyter" / "kernels" / "flaky"
    spec.mkdir(parents=True)
    argv = [sys.executable, str(launcher), "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "flaky", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setattr(kernels, "kernel_name", lambda: "flaky")
    monkeypatch.setattr(jobs, "START_TIMEOUT", 10)
    uri = tracking.tracking_uri()
    client = MlflowClient(uri)
    experiment = client.create_experiment("flaky-kernel")
    run = client.create_run(experiment)
    env = {"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": uri}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # execute() sets them for its kernel; undone after
    output = home / "runs" / "flaky" / "ok.ipynb"
    outcome = jobs.execute(
        jobs.Job(
            notebook=HERE / "notebooks" / "ok.ipynb",
            output=output,
            parameters={"x": 3},
            env=env,
            run_id=run.info.run_id,
            tracking_uri=uri,
        )
    )
    assert outcome.ok, outcome.error
    assert marker.exists()  # the first kernel was launched, and hung
    assert "starting another, attempt 2 of 3" in output.with_suffix(".log").read_text()
    assert client.get_run(run.info.run_id).data.metrics["value"] == 6.0
