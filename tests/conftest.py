"""Shared fixtures: every test runs in a throwaway workspace with its own MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_workspace(tmp_path_factory):
    """Point the workspace (data, cache, runs, mlflow.db) at a temp dir for the whole session.

    Tests never touch the developer's own workspace files or tracking store.
    """
    home = tmp_path_factory.mktemp("mmlab-home")
    (home / "notebooks").mkdir()
    saved = {k: os.environ.get(k) for k in ("MMLAB_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["MMLAB_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small embedded dataset (generated once per test session), as a folder path."""
    from mmlab.data import synthetic

    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    synthetic.generate(out, n=48, seed=0, image_size=64)
    return out


@pytest.fixture(scope="session")
def smoke_batch(tmp_path_factory):
    """`mmlab run params/smoke.yaml` through the real CLI, once per session, in a workspace of
    its own: (completed process, MlflowClient on its store, workspace folder)."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("smoke-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    env = {**os.environ, "MMLAB_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
    cli = [sys.executable, "-m", "mmlab", "run", str(REPO / "params" / "smoke.yaml")]
    done = subprocess.run(cli, cwd=REPO, env=env, capture_output=True, text=True)
    return done, MlflowClient(uri), home
