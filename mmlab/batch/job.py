"""The runner's unit of work: a `Job` in, an `Outcome` out; an executor decides where it runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlab.batch import kernels
from mmlab.core import progress, workspace


@dataclass(frozen=True)
class Resources:
    """What one execution asks of a scheduler (a stage's `resources` key; Ray's units)."""

    cpus: float = 1
    gpus: float = 0


@dataclass(frozen=True)
class Job:
    notebook: Path
    output: Path  # executed notebook; the HTML rendering goes beside it
    parameters: dict[str, Any]
    env: dict[str, str]  # added to the kernel's environment (MLflow run, threads, progress)
    run_id: str
    tracking_uri: str
    timeout: float | None = None  # seconds a cell may run; None: no limit
    resources: Resources = Resources()  # what the stage asks of a scheduler (Ray)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""  # the error's last line, for the summary
    seconds: float = 0.0  # wall time of the whole job
    kernel_seconds: float = 0.0  # time the kernel spent in cells (from the notebook)


def _error_line(error: BaseException) -> str:
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".strip()
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


@contextlib.contextmanager
def _stderr_to(log: Path):
    """Send this process's stderr (and so the kernel's: warnings, a dying kernel's last words)
    to `log` while the block runs, so parallel kernels do not interleave on the terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


KERNEL_PID = "kernel.pid"  # in the progress folder: where the runner interrupts a kernel


def interrupt(progress_folder: Path | None) -> bool:
    """Interrupt the kernel of the execution reporting to `progress_folder` (KeyboardInterrupt in
    its running cell, so the notebook ends there); False if that kernel is not on this machine."""
    try:
        pid = int((Path(progress_folder) / KERNEL_PID).read_text())
        os.kill(pid, signal.SIGINT)
    except (TypeError, OSError, ValueError):
        return False
    return True


def _record_kernel(client: Any) -> None:
    folder = os.environ.get(progress.ENV)
    process = getattr(getattr(client.km, "provisioner", None), "process", None)
    if folder and Path(folder).is_dir() and getattr(process, "pid", None):
        (Path(folder) / KERNEL_PID).write_text(str(process.pid))


def _progress_engine():
    """Papermill's nbclient engine, also recording each cell as it starts (`mmlab.core.progress`)
    and the kernel's process id (`interrupt`). Papermill's own method, with the client kept."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine
    from papermill.log import logger
    from papermill.utils import merge_kwargs, remove_args

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man,
            kernel_name,
            log_output=False,
            stdout_file=None,
            stderr_file=None,
            start_timeout=60,
            execution_timeout=None,
            **kwargs,
        ):
            cell_start = nb_man.cell_start
            client = None

            def start(cell, cell_index=None, **more):
                cell_start(cell, cell_index, **more)
                if cell_index is not None:
                    progress.report("cell", cell=cell_index + 1, cells=len(nb_man.nb.cells))
                    if cell_index == 0 and client is not None:  # the kernel is up by now
                        _record_kernel(client)

            nb_man.cell_start = start
            kwargs = remove_args(["input_path"], **kwargs)
            options = merge_kwargs(
                remove_args(["timeout", "startup_timeout"], **kwargs),
                timeout=execution_timeout or kwargs.get("timeout"),
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=logger,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            )
            client = PapermillNotebookClient(nb_man, **options)
            return client.execute()

    return ProgressEngine


# IPython kernels launched at the same moment by separate processes can race (papermill#239,
# #776): one never answers its first kernel_info. No cell has run then, so a fresh kernel is safe.
START_TIMEOUT = 120  # seconds for a kernel's first reply; a busy machine takes tens of seconds
KERNEL_STARTS = 3


def _kernel_never_started(error: BaseException) -> bool:
    """jupyter_client's errors for a kernel that never answered its first kernel_info."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        text.startswith("Kernel didn't respond") or text.startswith("Kernel died before replying")
    )


def execute(job: Job) -> Outcome:
    """Run the notebook with Papermill, render it, attach both to the job's MLflow run. A failing
    cell or dead kernel is a failed Outcome; the executed notebook is still attached."""
    import nbformat
    import papermill
    from mlflow.tracking import MlflowClient
    from papermill.engines import papermill_engines

    from mmlab import tracking

    start = time.perf_counter()
    os.environ.update(job.env)  # the kernel inherits this process's environment
    papermill_engines.register("mmlab", _progress_engine())
    error: BaseException | None = None
    log = job.output.with_suffix(".log")
    # left by a runner killed mid-notebook; the runner holds this output's claim
    workspace.sweep_stale(job.output)
    with workspace.atomic_path(job.output) as tmp, _stderr_to(log):
        for attempt in range(1, KERNEL_STARTS + 1):
            try:
                papermill.execute_notebook(
                    str(job.notebook),
                    str(tmp),
                    parameters=job.parameters,
                    kernel_name=kernels.kernel_name(),
                    progress_bar=False,
                    cwd=str(job.notebook.parent),
                    start_timeout=START_TIMEOUT,
                    execution_timeout=job.timeout,
                    engine_name="mmlab",
                )
            except Exception as raised:  # PapermillExecutionError, DeadKernelError, ...
                if _kernel_never_started(raised) and attempt < KERNEL_STARTS:
                    line = (
                        f"mmlab: the kernel did not start ({_error_line(raised)}); "
                        f"starting another, attempt {attempt + 1} of {KERNEL_STARTS}\n"
                    )
                    os.write(2, line.encode())  # fd 2 is the job's log here
                    continue
                error = raised
            break
        if not tmp.exists():  # failed before Papermill wrote anything (e.g. no kernel)
            nbformat.write(nbformat.read(job.notebook, as_version=4), tmp)
    nb = nbformat.read(job.output, as_version=4)
    html = job.output.with_suffix(".html")
    client = MlflowClient(job.tracking_uri)
    attached = [job.output, log]
    try:
        import nbconvert

        body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
        with workspace.atomic_path(html) as tmp:
            tmp.write_text(body, encoding="utf-8")
        attached.insert(0, html)
    except Exception as raised:  # a rendering problem must not hide the run's own result
        error = error or raised
    # a tracking server that is down would hold each upload through MLflow's retries: minutes
    if not tracking.answers(job.tracking_uri):
        error = error or tracking.TrackingServerError(tracking.server_down(job.tracking_uri))
    else:
        try:
            for path in attached:
                client.log_artifact(job.run_id, str(path), "notebook")
        except Exception as raised:  # the server went away since: the runner reports it
            error = error or raised
    return Outcome(
        ok=error is None,
        error=_error_line(error) if error else "",
        seconds=time.perf_counter() - start,
        kernel_seconds=sum(
            c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0 for c in nb.cells
        ),
    )


def safe_execute(job: Job) -> Outcome:
    """`execute`, with anything unexpected turned into a failed Outcome (keeps the pool alive)."""
    try:
        return execute(job)
    except Exception as error:
        traceback.print_exc()
        return Outcome(ok=False, error=_error_line(error))


class ExecutorError(RuntimeError):
    """An executor that cannot start (engine missing, cluster or store unreachable)."""
