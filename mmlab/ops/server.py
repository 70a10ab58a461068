"""`mmlab server`: MLflow's tracking server on PostgreSQL, artifacts proxied, basic auth optional.
Clients need only `MLFLOW_TRACKING_URI=http://HOST:PORT`: artifacts and models travel through
the server. Without `--db` a local PostgreSQL cluster in the workspace (`mmlab.ops.postgres`)
starts first and stops with it; `--auth` turns on MLflow's basic auth, users in the same
database. Driver, database, port and artifact store are checked first, one clear line each."""

from __future__ import annotations

import configparser
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmlab.core import extras, workspace
from mmlab.ops import postgres

DATABASE = "mlflow"  # the database `make server` creates in its local cluster
DRIVER_HINT = "pip install 'mmlab[server]' (psycopg)"

Print = Callable[[str], None]


class ServerError(RuntimeError):
    """The server cannot start as asked: the message says why and what to do."""


@dataclass(frozen=True)
class Settings:
    db: str | None = None  # postgresql://...; None: a local cluster in the workspace
    artifacts: str | None = None  # folder or s3://...; None: .mmlab/artifacts in the workspace
    host: str = "127.0.0.1"
    port: int = 5000  # 0: a free one
    auth: bool = False
    workers: int = 2


def state_dir() -> Path:
    """Where the workspace's server keeps its state (the local cluster, artifacts, auth)."""
    return workspace.root() / ".mmlab"


def state_file() -> Path:
    """Who runs the workspace's server: `{pid, server_pid, url, postgres}` (for `--stop`)."""
    return state_dir() / "server.json"


def redact(url: str) -> str:
    """`url` with its password hidden, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say nothing of its parts
        return url.split("@")[-1]


# --------------------------------------------------------------------------- checks


def store_url(db: str) -> str:
    """The SQLAlchemy URL MLflow gets: plain `postgresql://` names psycopg (3), which `mmlab[server]`
    installs, whatever SQLAlchemy's default driver."""
    for scheme in ("postgresql://", "postgres://"):
        if db.startswith(scheme):
            return "postgresql+psycopg://" + db[len(scheme) :]
    return db


def check_driver(db: str) -> None:
    """The database URL is PostgreSQL's and its driver is importable."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(db)
    except Exception:
        url = None
    if url is None or url.get_backend_name() != "postgresql":
        raise ServerError(
            f"--db {redact(db)}: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    if url.get_driver_name() == "psycopg":  # the one `mmlab[server]` installs
        extras.require("psycopg", "the tracking store on PostgreSQL")
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        raise ServerError(
            f"no PostgreSQL driver ({url.get_driver_name()}) for the tracking store: {DRIVER_HINT}"
        ) from None


def check_database(db: str) -> None:
    """The database answers with these credentials; else an error naming it and what to do."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db, connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise ServerError(
            f"cannot reach the database {redact(db)}: {reason}. Check that PostgreSQL runs "
            f"there and that the user, password and database exist (createdb -h HOST -U USER "
            f"DATABASE); or leave out --db: `make server` starts a local PostgreSQL"
        ) from None
    finally:
        engine.dispose()


def check_port(host: str, port: int) -> None:
    """Nobody listens on `host:port` (bound as the server will: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(
                f"port {port} on {host} is taken ({error.strerror}): another server (`mmlab "
                f"ui`, another `mmlab server`) listens there; pass --port N, or --port 0 for a "
                f"free one"
            ) from None


def artifacts_destination(artifacts: str | None) -> str:
    """Where the server stores artifacts: an object store URI or an absolute local folder."""
    if artifacts is None:
        artifacts = str(state_dir() / "artifacts")
    if artifacts.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise ServerError(
                f"--artifacts {artifacts}: S3 needs boto3: pip install boto3"
            ) from None
        return artifacts
    if "://" in artifacts:
        return artifacts  # another object store MLflow knows (gs://, wasbs://, ...)
    folder = Path(artifacts).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ServerError(f"--artifacts {artifacts}: cannot create it ({error.strerror})") from None
    return str(folder)


def check_auth(db: str) -> None:
    """MLflow creates the admin user on the first start with auth from a password only the
    environment can give: say so before it fails in a traceback."""
    import sqlalchemy

    if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        return
    username = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    engine = sqlalchemy.create_engine(db)
    query = sqlalchemy.text("SELECT 1 FROM users WHERE username = :name")
    try:
        with engine.connect() as connection:
            exists = sqlalchemy.inspect(connection).has_table("users")
            exists = exists and connection.execute(query, {"name": username}).first()
    finally:
        engine.dispose()
    if not exists:
        raise ServerError(
            f"--auth: the first start creates the admin user {username!r}, whose password MLflow "
            f"takes from MLFLOW_AUTH_ADMIN_PASSWORD (at least 12 characters): export it and "
            f"start again"
        )


# --------------------------------------------------------------------------- the command


def auth_config(db: str) -> Path:
    """MLflow's basic-auth config: users and permissions in the tracking database (own tables,
    version table `alembic_version_auth`). Readable by us only: it holds the database password."""
    config = configparser.RawConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": db.replace("%", "%%"),  # MLflow reads it with `%` interpolation
        "admin_username": "admin",
        # MLflow 3.11 and older read the admin's first password from this file only; with
        # `check_auth` passed MLflow never reads it, so a random one keeps them from failing.
        "admin_password": (
            os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or secrets.token_urlsafe(24)
        ).replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path = state_dir() / "basic_auth.ini"
    with workspace.atomic_path(path) as tmp:
        with open(tmp, "w") as sink:
            config.write(sink)
        tmp.chmod(0o600)
    return path


def command(settings: Settings, artifacts: str, port: int) -> list[str]:
    """The `mlflow server` command line; the store's URL and password go in the environment, which
    other users cannot read."""
    line = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts"]
    line += ["--artifacts-destination", artifacts, "--host", settings.host, "--port", str(port)]
    line += ["--workers", str(settings.workers)]
    # a worker still importing MLflow on a busy machine misses uvicorn's 5 s health check
    # and is restarted, again and again: give it a minute
    line += ["--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    return line + (["--app-name", "basic-auth"] if settings.auth else [])


def environment(settings: Settings, db: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": db}  # --backend-store-uri
    # MLflow starts `uvicorn` by name: this Python's scripts first, venv activated or not
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if settings.auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(db))
        # the auth app's CSRF key; its workers must share it, so it is set here, once
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    return env


def public_url(host: str, port: int) -> str:
    """The URL clients use: the host itself, or this machine's name for a wildcard address."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"http://{host}:{port}"


def wait_ready(server: subprocess.Popen, port: int, host: str) -> None:
    """Wait until the server answers /health; an error when it exits before that."""
    local = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    while True:
        code = server.poll()
        if code is not None:
            raise ServerError(
                f"mlflow server exited with code {code} before it answered: its output above "
                f"says why"
            )
        try:
            with urllib.request.urlopen(f"http://{local}:{port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)


def _stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:  # a worker ignoring SIGTERM: MLflow's own are fine
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --------------------------------------------------------------------------- start, stop


def serve(settings: Settings, out: Print = print) -> int:
    """Run the server (and the local PostgreSQL it started) until it exits, Ctrl-C or
    `mmlab server --stop`; returns its exit code."""
    owner = f"pid {os.getpid()} on {socket.gethostname()}"
    claim = workspace.claim(state_file(), owner)
    if claim is None:
        raise ServerError(
            f"an mmlab server already runs in this workspace ({workspace.claimant(state_file())}):"
            f" stop it first (`make server-stop` or `mmlab server --stop`)"
        )
    cluster = None
    try:
        if settings.auth:
            extras.require("flask_wtf", "mmlab server --auth (MLflow's basic auth)")
        port = settings.port or postgres.free_port(settings.host)
        check_port(settings.host, port)  # first: it costs nothing, a database start does
        if settings.db is None:
            check_driver(store_url("postgresql://"))
            cluster = postgres.Cluster(postgres.default_folder())
            cluster.init()
            out(f"PostgreSQL on 127.0.0.1:{cluster.start()} (cluster {cluster.folder})")
            db = store_url(cluster.create_database(DATABASE))
        else:
            db = store_url(settings.db)
            check_driver(db)
            check_database(db)
        if settings.auth:
            check_auth(db)
        artifacts = artifacts_destination(settings.artifacts)
        line = command(settings, artifacts, port)
        url = public_url(settings.host, port)
        with subprocess.Popen(
            line, env=environment(settings, db), start_new_session=True
        ) as server:
            try:
                state = {
                    "pid": os.getpid(),
                    "server_pid": server.pid,
                    "url": url,
                    "postgres": str(cluster.folder) if cluster else None,
                }
                with workspace.atomic_path(state_file()) as tmp:
                    tmp.write_text(json.dumps(state))
                wait_ready(server, port, settings.host)
                auth = ", basic auth" if settings.auth else ""
                out(
                    f"MLflow tracking server on {url} (store {redact(db)}, artifacts "
                    f"{artifacts}{auth})"
                )
                out(f"export MLFLOW_TRACKING_URI={url}")
                if settings.auth:
                    out(
                        "clients also export MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD (the admin: admin and MLFLOW_AUTH_ADMIN_PASSWORD)"
                    )
                out("stop it with Ctrl-C or `make server-stop` (mmlab server --stop)")
                code = server.wait()
                out(f"mlflow server exited with code {code}")
                return code or 1
            finally:
                _stop_process_group(server)
    finally:
        if cluster is not None and cluster.stop():
            out(f"PostgreSQL stopped (cluster {cluster.folder})")
        state_file().unlink(missing_ok=True)
        claim.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(path: Path) -> bool:
    """Whether a `serve` still holds the workspace's claim, which the OS drops when it ends."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path.parent / f".{path.name}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def stop(out: Print = print) -> int:
    """Stop the workspace's server and its local PostgreSQL; 0 when nothing runs any more."""
    path = state_file()
    state = json.loads(path.read_text()) if path.exists() else None
    if state is not None:
        if _running(path):
            os.kill(state["pid"], signal.SIGTERM)  # it stops mlflow and PostgreSQL itself
            while _running(path):
                time.sleep(0.2)
        elif _alive(state["server_pid"]):  # its `mmlab server` was killed outright
            os.killpg(state["server_pid"], signal.SIGTERM)
        out(f"stopped the tracking server {state['url']}")
        path.unlink(missing_ok=True)
    folder = state["postgres"] if state and state["postgres"] else postgres.default_folder()
    cluster = postgres.Cluster(Path(folder))
    if cluster.initialized and cluster.stop():
        out(f"stopped PostgreSQL (cluster {cluster.folder})")
    elif state is None:
        out("no mmlab server runs in this workspace")
    return 0
