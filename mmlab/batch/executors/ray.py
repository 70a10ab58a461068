"""Executions as Ray tasks, on a local Ray instance or a cluster (`mmlab run --executor ray`).
A task runs `job.execute(job)` with the stage's `resources` as `num_cpus` / `num_gpus`. The
checkout (less runs, stores, data, caches) ships as the runtime env's `working_dir`, and the
executed notebook, HTML and log come back with the result, so a cluster needs no shared disk.
A worker on this machine uses the workspace's data and reports progress; a remote one must
reach the tracking store, so a local SQLite file or loopback server is refused."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import tempfile
import traceback
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mmlab
from mmlab.batch.job import ExecutorError, Job, Outcome, safe_execute
from mmlab.core import progress, workspace

# What workers do not need (gitignore patterns; a leading "/" keeps `/data/` off `mmlab/data`):
# `/.git` is a folder in a clone, a file in a worktree; `/optuna.db*` holds searches' studies.
EXCLUDES = (
    "/.git .venv*/ /runs/ /mlruns/ /mlartifacts/ /mlflow.db* /optuna.db* /data/ /cache/ "
    "/.pgdata/ __pycache__/ .ipynb_checkpoints/ *.pyc"
).split()
# The files `execute` leaves beside the executed notebook, shipped back to the driver.
OUTPUT_SUFFIXES = (".ipynb", ".html", ".log")


def code_root() -> Path:
    """The folder shipped to workers: the checkout holding this package (notebooks/ beside
    mmlab/), else the workspace root (a pip-installed mmlab is then shipped on its own)."""
    checkout = Path(mmlab.__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "notebooks").is_dir():
        return checkout
    return workspace.root()


def runtime_env(root: Path) -> dict[str, Any]:
    """Ray's runtime environment: the checkout (and mmlab if outside it) and this shell's MLflow
    client settings, which a cluster's workers lack."""
    env: dict[str, Any] = {"working_dir": str(root), "excludes": list(EXCLUDES)}
    package = Path(mmlab.__file__).resolve().parent
    if not package.is_relative_to(root):
        env["py_modules"] = [str(package)]
    client = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_")}
    client.pop("MLFLOW_TRACKING_URI", None)  # each job carries the URI it was created with
    if client:
        env["env_vars"] = client
    return env


def only_here(uri: str) -> bool:
    """A tracking URI that only this machine reaches: a file (SQLite, a file store) or a
    server on a loopback address."""
    if uri == "databricks":  # MLflow's one scheme-less URI that is not a path
        return False
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return loopback(parsed.hostname or "")
    return parsed.scheme in ("", "file", "sqlite") or len(parsed.scheme) == 1  # "C:\\..."


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def remote_address(address: str | None) -> str | None:
    """The host of an address on another machine (`ray://HOST:10001`, `HOST:6379`), else None
    (no address, `auto`, `local`, a loopback host)."""
    if not address or address in ("auto", "local"):
        return None
    host = urlparse(address if "://" in address else f"ray-gcs://{address}").hostname or ""
    return None if loopback(host) or host == socket.gethostname() else host


def send_token_if_any() -> None:
    """Send Ray's auth token when joining a cluster, as `ray start` does; a driver sends it only in
    RAY_AUTH_MODE=token, and an explicit RAY_AUTH_MODE is left alone."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:  # Ray's own switch: it also refreshes the configuration `import ray` already read
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def store_error(uri: str, where: str) -> str:
    return (
        f"MLFLOW_TRACKING_URI is {uri}, which only the machine running `mmlab run` reaches, and "
        f"{where} must write to it: start a tracking server that every node reaches "
        "(`mmlab server`, docs/scale-out.md) and export MLFLOW_TRACKING_URI=http://HOST:PORT"
    )


def run_task(job: Job, notebook: str) -> tuple[Outcome, dict[str, bytes]]:
    """The Ray task: run `job` here; (outcome, output files). `notebook`: a path in the checkout."""
    here = Path.cwd()
    saved = dict(os.environ)  # `execute` exports the job's environment; the next task starts clean
    env = dict(job.env)
    folder = env.get(progress.ENV)
    if not (folder and Path(folder).is_dir()):  # not on the driver's machine
        if only_here(job.tracking_uri):
            return Outcome(ok=False, error=store_error(job.tracking_uri, "this Ray worker")), {}
        env.pop(progress.ENV, None)
        env["MMLAB_HOME"] = os.environ.get("MMLAB_HOME") or str(here)
    path = here / notebook
    env["MMLAB_NOTEBOOK_PATH"] = str(path)
    with tempfile.TemporaryDirectory(prefix="mmlab-ray-") as scratch:
        output = Path(scratch) / job.output.name
        try:
            outcome = safe_execute(replace(job, notebook=path, output=output, env=env))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        files = {
            suffix: output.with_suffix(suffix).read_bytes()
            for suffix in OUTPUT_SUFFIXES
            if output.with_suffix(suffix).is_file()
        }
    return outcome, files


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".strip()


class RayExecutor:
    """One Ray task per execution; `address` None starts a local instance with `jobs` CPUs."""

    def __init__(self, jobs: int, address: str | None = None):
        import ray

        from mmlab import tracking

        self.root = code_root()
        host = remote_address(address)
        uri = tracking.tracking_uri()
        if host and only_here(uri):
            raise ExecutorError(store_error(uri, f"workers of the cluster at {host}"))
        options: dict[str, Any] = {
            "runtime_env": runtime_env(self.root),
            # a task's output goes to its log file (attached to its run), not to this terminal
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address is None:
            # a fresh loopback-only instance, reporting nothing to Ray's usage statistics
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            options |= {
                "address": "local",
                "num_cpus": max(1, jobs),
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
            }
        else:
            options["address"] = address
            send_token_if_any()
        try:
            ray.init(**options)
        except Exception as error:  # ConnectionError, a node that did not start, bad address
            ray.shutdown()  # whatever part of a local instance did start
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            hint = (
                "is it running (`ray start --head`), and is the address right?"
                if address
                else "see /tmp/ray/session_latest/logs (raylet.out) for why"
            )
            raise ExecutorError(f"cannot start {where}: {_first_line(error)}; {hint}") from None
        self.local = address is None
        self.capacity = ray.cluster_resources()
        cpus = self.capacity.get("CPU", 0)
        self.description = (
            f"ray (a local instance, {cpus:g} CPUs)"
            if self.local
            else f"ray at {address} ({len(ray.nodes())} nodes, {cpus:g} CPUs)"
        )
        self.task = ray.remote(max_retries=0)(run_task)  # a notebook never runs twice silently
        self.running: dict[Any, Job] = {}

    def infeasible(self, job: Job) -> str:
        """Why a local instance can never run `job`, or "" (a cluster may still scale up)."""
        if not self.local:
            return ""
        for name, amount in {"CPU": job.resources.cpus, "GPU": job.resources.gpus}.items():
            have = self.capacity.get(name, 0)
            if amount > have:
                fix = (
                    f"run with --jobs {math.ceil(amount)} or more"
                    if name == "CPU"
                    else "run on a cluster with GPUs (--address), or drop resources.gpus"
                )
                return (
                    f"the stage asks for resources.{name.lower()}s={amount:g}, the local Ray "
                    f"instance has {have:g}: {fix}"
                )
        return ""

    def submit(self, job: Job) -> Future[Outcome]:
        result: Future[Outcome] = Future()
        problem = self.infeasible(job)
        if not problem and not job.notebook.is_relative_to(self.root):
            problem = (
                f"{job.notebook} is outside {self.root}, the folder Ray ships to its workers: "
                "keep notebooks in the checkout"
            )
        if problem:
            result.set_result(Outcome(ok=False, error=problem))
            return result
        # a kernel uses the cores its task holds, as Ray sets for its own workers
        threads = str(max(1, math.floor(job.resources.cpus)))
        env = {**job.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        ref = self.task.options(num_cpus=job.resources.cpus, num_gpus=job.resources.gpus).remote(
            replace(job, env=env), job.notebook.relative_to(self.root).as_posix()
        )
        self.running[ref] = job
        ref.future().add_done_callback(lambda done: self._finish(ref, job, done, result))
        return result

    def _finish(self, ref: Any, job: Job, done: Future, result: Future[Outcome]) -> None:
        """Write the task's files where the local executor would have; settle `result`."""
        self.running.pop(ref, None)
        try:
            outcome, files = done.result()
        except Exception as error:  # the worker died, the task was cancelled, a runtime env failed
            outcome, files = Outcome(ok=False, error=f"ray: {_first_line(error)}"), {}
        try:
            workspace.sweep_stale(job.output)  # left by a runner killed while writing
            for suffix, data in files.items():
                with workspace.atomic_path(job.output.with_suffix(suffix)) as tmp:
                    tmp.write_bytes(data)
        except OSError as error:
            traceback.print_exc()
            outcome = replace(outcome, ok=False, error=outcome.error or _first_line(error))
        result.set_result(outcome)

    def shutdown(self, wait: bool = True) -> None:
        import ray

        if not wait:
            # a killed worker takes its kernel along: ipykernel exits when its parent goes
            for ref in list(self.running):
                ray.cancel(ref, force=True)
        # a local instance stops with its driver; a cluster only loses this connection
        ray.shutdown()
