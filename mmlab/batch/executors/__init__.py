"""Where executions run: `local` (a process pool) or `ray`, registered in `EXECUTORS`; the runner
hands a `Job` and gets a Future[Outcome]. A factory imports its engine only when called."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from mmlab.batch.job import ExecutorError, Job, Outcome
from mmlab.core.registry import Registry

EXECUTORS = Registry("executor", error=ExecutorError)


class Executor(Protocol):
    description: str  # where executions run, for the runner's first line

    def submit(self, job: Job) -> Future[Outcome]: ...

    def shutdown(self, wait: bool = True) -> None:
        """wait=True: let running jobs finish; False: stop them now (interrupted batch)."""


@EXECUTORS.register("local")
def _local(jobs: int) -> Executor:
    from mmlab.batch.executors.local import LocalExecutor

    return LocalExecutor(jobs)


@EXECUTORS.register("ray")
def _ray(jobs: int, address: str | None = None) -> Executor:
    from mmlab.core import extras

    try:
        extras.require("ray", "--executor ray")
    except extras.MissingExtra as error:
        raise ExecutorError(str(error)) from None
    from mmlab.batch.executors.ray import RayExecutor

    return RayExecutor(jobs, address)


def names() -> list[str]:
    return EXECUTORS.names()


def create(name: str, jobs: int, **options: object) -> Executor:
    """The executor `name` for `jobs` parallel executions; `options` are its own (Ray:
    `address`; None means not given). An option it does not take is an ExecutorError."""
    given = {k: v for k, v in options.items() if v is not None}
    return EXECUTORS.create(name, jobs, **given)
