"""The MLflow UI and JupyterLab in a real browser: headless Chromium driven by Playwright.

`mmlab ui` and `jupyter lab` are started on 127.0.0.1 (free ports) over the smoke batch's
workspace and stopped after. Chromium is Debian's (`.ci/setup-browser.sh` installs it); Playwright
only drives it (`executable_path`), it never downloads a browser. Screenshots go to each test's
output folder (tmp_path). The checks are plain functions that raise AssertionError, so a test can
also show that they fail on a UI with no runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from mlflow.tracking import MlflowClient

from mmlab.batch import config

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "params" / "smoke.yaml"
# How long a page may take to show what a check waits for. A bound on waiting, not a speed
# check: without it a UI that never shows our runs would hang the test instead of failing it.
WAIT_MS = 180_000

pytestmark = pytest.mark.slow


def chromium_path() -> str | None:
    """$MMLAB_CHROMIUM, else Debian's `chromium` (or `chromium-browser`) on PATH."""
    candidates = [os.environ.get("MMLAB_CHROMIUM"), "chromium", "chromium-browser"]
    return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip(
            "Chromium not found ($MMLAB_CHROMIUM, chromium or chromium-browser on PATH): "
            "install it with .ci/setup-browser.sh (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    # Chromium's sandbox refuses to start as root (CI containers): drop it only there.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True, args=args)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    page.screenshot(path=tmp_path / "last.png")
    context.close()


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], env: dict, ready_url: str, log: Path):
    """Start `command` in its own process group, wait until `ready_url` answers, stop it after."""
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"{command[2:4]} exited ({process.returncode}): {log.read_text()[-3000:]}"
                )
            try:
                urllib.request.urlopen(ready_url, timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def workspace_env(home: Path, uri: str) -> dict:
    return {
        **os.environ,
        "MMLAB_HOME": str(home),
        "MLFLOW_TRACKING_URI": uri,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


@contextlib.contextmanager
def mlflow_ui(home: Path, uri: str, log: Path):
    """`mmlab ui` over the store `uri`; yields the UI's base URL."""
    port = free_port()
    command = [sys.executable, "-m", "mmlab", "ui", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with server(command, workspace_env(home, uri), f"{base}/health", log):
        yield base


# --------------------------------------------------------------------------- MLflow UI checks


def smoke_notebooks() -> list[str]:
    """The experiments the smoke batch fills: one per notebook it runs."""
    return sorted({e.notebook.stem for e in config.load(SMOKE).executions})


def model_training_view(page, base: str) -> None:
    """MLflow 3 opens in its GenAI view; runs, child runs and comparisons live in the model
    training view, which the toggle switches to (and the browser remembers)."""
    page.goto(f"{base}/#/experiments")
    page.get_by_text("Model training", exact=True).first.click()


def check_experiments(page, base: str, names: list[str], out: Path) -> None:
    """The experiments list shows every experiment in `names`."""
    model_training_view(page, base)
    page.reload()  # the list as the store holds it now, not as this page last loaded it
    page.get_by_role("link", name="Default", exact=True).wait_for()  # every store has it
    page.screenshot(path=out / "experiments.png")
    missing = [n for n in names if not page.get_by_role("link", name=n, exact=True).count()]
    assert not missing, f"the MLflow UI's experiments list lacks {missing}"


def check_runs_table(
    page,
    base: str,
    experiment_id: str,
    expected: int,
    out: Path,
    wait_ms: int = WAIT_MS,
    run_name: str = "",
) -> None:
    """The experiment's runs table counts `expected` runs (parents and their children) and
    shows the row of `run_name`."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs")
    counter = page.get_by_text(re.compile(r"^[1-9]\d* matching runs?$"))
    try:
        counter.wait_for(timeout=wait_ms)
    except Exception as error:  # playwright's TimeoutError: the table stayed empty
        page.screenshot(path=out / f"runs_{experiment_id}.png")
        raise AssertionError(f"experiment {experiment_id}: the runs table shows no runs") from error
    if run_name:
        page.get_by_text(run_name, exact=True).first.wait_for()
    page.screenshot(path=out / f"runs_{experiment_id}.png")
    shown = int(counter.inner_text().split()[0])
    assert shown == expected, f"experiment {experiment_id}: {shown} runs shown, {expected} stored"


def check_child_runs(
    page, base: str, experiment_id: str, run_id: str, children: list[str], out: Path
) -> None:
    """The run's page lists every child run by name."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}")
    listed = page.get_by_test_id("key-value-Child runs").get_by_role("link")
    listed.first.wait_for()  # the list is filled after the rest of the page
    more = page.locator("button[data-component-id$='child_runs.load_more_button']")
    while more.count():  # the page lists ten at a time
        shown = listed.count()
        more.first.scroll_into_view_if_needed()
        more.first.click()
        page.wait_for_function(
            "([sel, n]) => document.querySelectorAll(sel).length > n",
            arg=["[data-testid='key-value-Child runs'] a", shown],
        )
    page.screenshot(path=out / "fusion_run.png", full_page=True)
    names = set(listed.all_inner_texts())
    missing = [c for c in children if c not in names]
    assert not missing, f"run {run_id}: the page does not list child runs {missing}"


def check_compare(page, base: str, experiment_id: str, runs: dict[str, str], out: Path) -> None:
    """The compare view of `runs` (id -> name) opens with both runs and their metrics."""
    ids, experiments = json.dumps(list(runs)), json.dumps([experiment_id])
    page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={experiments}")
    page.get_by_text(f"Comparing {len(runs)} Runs", exact=False).wait_for()
    page.get_by_text("test_accuracy", exact=True).first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()  # the parallel coordinates plot
    page.screenshot(path=out / "compare.png", full_page=True)
    missing = [n for n in runs.values() if not page.get_by_text(n, exact=True).count()]
    assert not missing, f"the compare view lacks runs {missing}"


def check_notebook_artifact(
    page,
    base: str,
    experiment_id: str,
    run_id: str,
    artifact: str,
    title: str,
    output: str,
    out: Path,
) -> None:
    """The executed notebook's HTML artifact renders: its title and an executed cell's output."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact}")
    frame = page.frame_locator("iframe").first
    frame.get_by_text(title).first.wait_for()
    frame.get_by_text(output).first.wait_for()
    page.screenshot(path=out / "notebook_artifact.png")


def stage_run(client: MlflowClient, notebook: str):
    experiment = client.get_experiment_by_name(notebook)
    assert experiment is not None, f"no experiment {notebook} in the store"
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mmlab.stage` != '' and attributes.status = 'FINISHED'"
    )
    assert runs, f"no finished batch run in {notebook}"
    return experiment, runs[0]


def test_mlflow_ui_shows_the_smoke_batch(smoke_batch, page, tmp_path):
    done, client, home = smoke_batch
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    experiment, fusion = stage_run(client, "02_fusion_comparison")
    eid, run_id = experiment.experiment_id, fusion.info.run_id
    children = client.search_runs([eid], f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(children) >= 2
    stored = len(client.search_runs([eid]))
    with mlflow_ui(home, client.tracking_uri, tmp_path / "ui.log") as base:
        check_experiments(page, base, smoke_notebooks(), tmp_path)
        check_runs_table(page, base, eid, stored, tmp_path, run_name=fusion.info.run_name)
        check_child_runs(page, base, eid, run_id, [c.info.run_name for c in children], tmp_path)
        pair = {c.info.run_id: c.info.run_name for c in children[:2]}
        check_compare(page, base, eid, pair, tmp_path)
        check_notebook_artifact(
            page,
            base,
            eid,
            run_id,
            "notebook/02_fusion_comparison.html",
            "Fusion comparison",
            "best: ",
            tmp_path,
        )


def test_mlflow_ui_checks_fail_when_the_ui_shows_no_runs(browser, page, tmp_path):
    """An empty store: no experiments listed. Then the experiments without runs: empty tables."""
    home = tmp_path / "empty"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with mlflow_ui(home, uri, tmp_path / "ui.log") as base:
        with pytest.raises(AssertionError, match="experiments list lacks"):
            check_experiments(page, base, smoke_notebooks(), tmp_path)
        client = MlflowClient(uri)
        ids = [client.create_experiment(name) for name in smoke_notebooks()]
        check_experiments(page, base, smoke_notebooks(), tmp_path)
        # a loaded table says so at once; an empty one is given a short while to fill
        with pytest.raises(AssertionError, match="the runs table shows no runs"):
            check_runs_table(page, base, ids[0], 1, tmp_path, wait_ms=20_000)


# --------------------------------------------------------------------------- JupyterLab


@contextlib.contextmanager
def jupyter_lab(root: Path, home: Path, uri: str, tmp: Path):
    """`jupyter lab` over `root` with its own config and runtime folders; yields (URL, token)."""
    port, token = free_port(), secrets.token_hex(16)
    env = workspace_env(home, uri)
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--allow-root",
        "--no-browser",
        "--ip",
        "127.0.0.1",
        f"--port={port}",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.port_retries=0",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    base = f"http://127.0.0.1:{port}"
    with server(command, env, f"{base}/api/status?token={token}", tmp / "lab.log"):
        yield base, token


def check_notebook_in_lab(
    page, base: str, token: str, notebook: str, kernel: str, out: Path
) -> str:
    """Open `notebook` in JupyterLab, check the kernel it shows, run its parameters cell, then
    ask the kernel which Python and which mmlab it runs; returns that answer."""
    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
    page.locator(".jp-Notebook .jp-Cell").nth(1).wait_for()
    name = page.locator(".jp-KernelName").first
    with contextlib.suppress(Exception):  # "No Kernel" until the session starts, then its name
        page.wait_for_function(
            "([el, k]) => el.textContent.trim() === k", arg=[name.element_handle(), kernel]
        )
    shown = name.inner_text().strip()
    assert shown == kernel, f"{notebook} opened with kernel {shown!r}, expected {kernel!r}"
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
    cells = page.locator(".jp-Notebook .jp-Cell")
    parameters = cells.nth(1)
    assert "jp-mod-noOutputs" in (parameters.get_attribute("class") or "")
    parameters.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    prompt = parameters.locator(".jp-InputArea-prompt")
    page.wait_for_function("(el) => el.textContent.trim() === '[1]:'", arg=prompt.element_handle())
    errors = parameters.locator(".jp-OutputArea-output[data-mime-type*='error']")
    assert not errors.count(), f"{notebook}: the parameters cell raised"
    # a scratch cell above the next one (the notebook file is a copy): which Python, which mmlab
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.keyboard.press("Enter")
    page.keyboard.type("import sys, mmlab; print(sys.prefix, mmlab.__file__)")
    page.keyboard.press("Shift+Enter")
    answer = page.locator(".jp-OutputArea-output").filter(has_text="mmlab").first
    answer.wait_for()
    page.screenshot(path=out / "jupyterlab.png")
    return answer.inner_text()


def test_jupyterlab_runs_notebook_02_parameters_with_the_venv_kernel(page, tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)  # the browser may save: never the repository's
    home = tmp_path / "home"
    home.mkdir()
    notebook = "02_fusion_comparison.ipynb"
    spec = nbformat.read(root / notebook, as_version=4).metadata["kernelspec"]["name"]
    kernel = KernelSpecManager().get_kernel_spec(spec).display_name
    with jupyter_lab(root, home, f"sqlite:///{home / 'mlflow.db'}", tmp_path) as (base, token):
        answer = check_notebook_in_lab(page, base, token, notebook, kernel, tmp_path)
    prefix, module = answer.split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), answer
    assert Path(module).resolve() == (REPO / "mmlab" / "__init__.py").resolve(), answer
