"""`mmlab server` and `mmlab run` say what is wrong before anything waits on a server:
a port taken, a database that does not answer, no PostgreSQL driver, no tracking server.
The end-to-end tests on a real PostgreSQL and MLflow server are in tests/test_server.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from mmlab.ops import postgres, server

REPO = Path(__file__).resolve().parent.parent


def mmlab(*args: str, code: str = "pass", **env: str) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter (`code` runs first: to hide a package)."""
    script = f"import sys; {code}; from mmlab.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def test_a_database_that_does_not_answer_is_named_without_its_password():
    port = postgres.free_port()  # nobody listens there
    db = f"postgresql://alice:s3cret@127.0.0.1:{port}/mlflow"
    done = mmlab("server", "--db", db, "--port", "0")
    assert done.returncode == 2
    assert f"cannot reach the database postgresql+psycopg://alice:***@127.0.0.1:{port}/mlflow" in (
        done.stderr
    )
    assert "make server" in done.stderr and "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_named_before_any_database_is_touched():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = mmlab("server", "--db", "postgresql://u:p@127.0.0.1:1/x", "--port", str(port))
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr and "--port 0" in done.stderr


def test_no_driver_names_the_extra_that_installs_it():
    done = mmlab(
        "server",
        "--db",
        "postgresql://u:p@127.0.0.1:1/x",
        "--port",
        "0",
        code="sys.modules['psycopg'] = None",  # as if mmlab[server] were not installed
    )
    assert done.returncode == 2
    assert "pip install 'mmlab[server]'" in done.stderr and "psycopg" in done.stderr


def test_a_database_url_that_is_not_postgresql_is_refused():
    done = mmlab("server", "--db", "mysql://u:p@host/db", "--port", "0")
    assert done.returncode == 2 and "expected postgresql://" in done.stderr


def test_stop_with_nothing_running_says_so(tmp_path):
    done = mmlab("server", "--stop", MMLAB_HOME=str(tmp_path), MMLAB_POSTGRES_DIR="")
    assert done.returncode == 0
    assert "no mmlab server runs in this workspace" in done.stdout


def test_a_batch_against_a_server_that_is_down_fails_at_once_saying_what_to_do(tmp_path):
    uri = f"http://127.0.0.1:{postgres.free_port()}"
    batch = REPO / "tests" / "batches" / "epochs.yaml"
    done = mmlab("run", str(batch), MMLAB_HOME=str(tmp_path), MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 1
    assert f"the tracking server {uri} does not answer" in done.stderr
    assert "make server" in done.stderr and "Traceback" not in done.stderr


def test_store_urls_name_the_driver_the_extra_installs():
    assert server.store_url("postgresql://u:p@h:1/d") == "postgresql+psycopg://u:p@h:1/d"
    assert server.store_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert server.store_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert server.redact("postgresql+psycopg://u:pw@h:1/d") == "postgresql+psycopg://u:***@h:1/d"


def test_the_auth_configuration_keeps_users_in_the_store_and_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLAB_HOME", str(tmp_path))
    db = "postgresql+psycopg://mmlab:p%40ss@127.0.0.1:5432/mlflow"
    env = server.environment(server.Settings(auth=True), db)
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert path.stat().st_mode & 0o077 == 0  # it holds the database password
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    assert read_auth_config().database_uri == db  # MLflow reads it back, `%` and all
    assert env["MLFLOW_BACKEND_STORE_URI"] == db  # mlflow server's --backend-store-uri
    line = server.command(server.Settings(auth=True), str(tmp_path), 5000)
    assert "p%40ss" not in " ".join(line)  # `ps` shows command lines to every user
    assert line[line.index("--app-name") + 1] == "basic-auth"
    assert line[line.index("--artifacts-destination") + 1] == str(tmp_path)
    assert "--serve-artifacts" in line
