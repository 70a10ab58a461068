"""A local PostgreSQL cluster in a folder: initdb once, start on a free port, stop, databases.
`mmlab server` without `--db` keeps one under `.mmlab/postgres/`, using the distribution's
`initdb` and `pg_ctl`. PostgreSQL refuses root: run as root, the folder goes to the `postgres`
user and server commands run through `runuser`. Clients connect over TCP on 127.0.0.1 with a
password only the folder's owner can read."""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mmlab.core import workspace

ROLE = "mmlab"  # the cluster's superuser role, which the tracking server connects as
SYSTEM_USER = "postgres"  # who runs the server when we are root
ENV_FOLDER = "MMLAB_POSTGRES_DIR"  # where the workspace's cluster lives, if not .mmlab/postgres
INSTALL_HINT = (
    "install PostgreSQL's server binaries (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql) or pass --db postgresql://... for a server you have"
)


class PostgresError(RuntimeError):
    """The local cluster cannot be set up or started: the message says what to do."""


def default_folder() -> Path:
    """`MMLAB_POSTGRES_DIR`, else `.mmlab/postgres` in the workspace."""
    env = os.environ.get(ENV_FOLDER)
    return Path(env).expanduser().resolve() if env else workspace.root() / ".mmlab" / "postgres"


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.parent.name)) or (0,)


def binaries() -> Path:
    """The folder holding `initdb` and `pg_ctl`: the PATH's, else the newest Debian install."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version)
    found = shutil.which("initdb") or (debian[-1] if debian else None)
    if not found or not (Path(found).resolve().parent / "pg_ctl").exists():
        raise PostgresError(f"no PostgreSQL server binaries (initdb, pg_ctl): {INSTALL_HINT}")
    return Path(found).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def system_user() -> str | None:
    """The unprivileged user that runs the server when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} user to run it: "
            f"install Debian's postgresql package (it creates the user), `useradd --system "
            f"{SYSTEM_USER}`, or run as a normal user"
        ) from None
    return SYSTEM_USER


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster whose files all live in `folder` (data, log, password)."""

    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    # ----- running commands as the right user
    def _command(self, *args: str) -> list[str]:
        user = system_user()
        return ["runuser", "-u", user, "--", *args] if user else list(args)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(self._command(*args), capture_output=True, text=True)
        if check and done.returncode:
            output = (done.stderr or done.stdout).strip()
            tail = "\n".join(self.log.read_text().splitlines()[-5:]) if self.log.exists() else ""
            raise PostgresError(
                f"{Path(args[0]).name} {' '.join(args[1:2])} failed for the cluster in "
                f"{self.folder}: {output}"
                + (f"\nits log ({self.log}) ends:\n{tail}" if tail else "")
            )
        return done

    def _pg_ctl(self, action: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        pg_ctl = str(binaries() / "pg_ctl")
        return self._run(pg_ctl, action, "-D", str(self.data), *args, check=check)

    def _hand_over(self, path: Path) -> None:
        """As root: give `path` to the server's user, and check it can reach it."""
        user = system_user()
        if user is None:
            return
        shutil.chown(path, user, user)
        if subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(path)]).returncode:
            raise PostgresError(
                f"the {user!r} user, which runs PostgreSQL for root, cannot reach {path}: a folder "
                f"above it is closed to other users (/root is, for one). Put the cluster where it "
                f"can: {ENV_FOLDER}=/var/tmp/mmlab-postgres"
            )

    # ----- life cycle
    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self) -> None:
        """Create the cluster once (role `mmlab`, random password, scram-sha-256), in a temporary folder
        renamed into place."""
        if self.initialized:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.folder)
        password = secrets.token_urlsafe(24)
        with workspace.atomic_path(self.password_file) as tmp:
            tmp.write_text(password)
            tmp.chmod(0o600)
        staging = self.folder / ".data.init"
        pwfile = self.folder / ".pwfile"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            pwfile.write_text(password)
            pwfile.chmod(0o600)
            self._hand_over(pwfile)
            options = ("--auth=scram-sha-256", "--encoding=UTF8", "--no-locale")
            initdb = str(binaries() / "initdb")
            self._run(initdb, "-D", str(staging), "-U", ROLE, f"--pwfile={pwfile}", *options)
            staging.rename(self.data)
        finally:
            pwfile.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)

    def port(self) -> int | None:
        """The port of the running server (from postmaster.pid), or None when it is stopped."""
        if not self.data.is_dir():
            return None
        if self._pg_ctl("status", check=False).returncode != 0:
            return None
        lines = (self.data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])  # the 4th line is the port (PostgreSQL's documented layout)

    def start(self, port: int | None = None) -> int:
        """Start the server on 127.0.0.1 (TCP only, a free port unless given); returns the port.
        A server already running is left as it is."""
        running = self.port()
        if running is not None:
            return running
        port = port or free_port()
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        self._pg_ctl("start", "-l", str(self.log), "-o", options, "-w", "-t", "120")
        return port

    def stop(self) -> bool:
        """Stop the server (fast: open sessions are rolled back); False if it was not running."""
        if self.port() is None:
            return False
        self._pg_ctl("stop", "-m", "fast", "-w")
        return True

    # ----- databases
    def url(self, database: str) -> str:
        """The URL (libpq's form) of `database` on the running server, password included."""
        port = self.port()
        if port is None:
            raise PostgresError(f"the PostgreSQL cluster in {self.folder} is not running")
        password = self.password_file.read_text().strip()
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{database}"

    def create_database(self, name: str) -> str:
        """Create `name` unless it exists; returns its URL."""
        import psycopg

        # autocommit: CREATE DATABASE cannot run in a transaction
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
