"""Training on several processes with `torch.distributed`: the process-group plumbing.
Entered by `torchrun -m mmlab.captioning.ddp ...` or by `TrainConfig(processes=N)`, which
starts the processes itself (`launch`); both run `mmlab.train.loop.fit`. Each process takes
its share of every global batch (`shard`) and weights its mean loss by that share, so the
batches, steps and averaged gradients are those of one process with the same `batch_size`.
Rank 0 alone evaluates and talks to MLflow. NCCL on CUDA (`cuda:LOCAL_RANK`), gloo on CPU."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

_launcher_queue = None  # set in a process `launch` started: where rank 0's messages go


@dataclass(frozen=True)
class Group:
    """Where this process stands: its rank among `size` processes and the device it trains on."""

    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, logs to MLflow and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def backend(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def active() -> bool:
    """Whether this process is one of a process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: torch.device | str) -> Group:
    """This process's `Group`: joins the group the environment describes (`WORLD_SIZE`, `RANK`,
    `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), else a group of one on `device`."""
    device = torch.device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise RuntimeError(
                    f"process of local rank {local} has no GPU: this machine has "
                    f"{torch.cuda.device_count()}; start at most that many processes per node"
                )
            torch.cuda.set_device(local)
        dist.init_process_group(backend(device))
    if not active():
        return Group(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return Group(dist.get_rank(), dist.get_world_size(), device)


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: torch.Tensor, group: Group) -> torch.Tensor:
    """This process's consecutive part of a global batch's rows; sizes differ by at most one (a
    process may get none)."""
    return rows.tensor_split(group.size)[group.rank] if group.distributed else rows


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over the processes (a copy; the tensor itself when there is one)."""
    if not active():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def broadcast(value: Any, group: Group) -> Any:
    """Rank 0's `value` on every process (any picklable value)."""
    if not group.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=group.device)
    return box[0]


def barrier(group: Group) -> None:
    if group.distributed:
        dist.barrier()


def main_first(group: Group, build: Callable[[], T]) -> T:
    """`build()` on rank 0 first, then on the others, so rank 0 fills the cache the others read."""
    value = build() if group.main else None
    barrier(group)
    if not group.main:
        value = build()
    barrier(group)
    return value


@contextlib.contextmanager
def main_run(group: Group, notebook: str, params: dict, tags: dict):
    """One MLflow run around the body on rank 0 only; it ends FAILED when the body raises."""
    if not group.main:
        yield
        return
    from mmlab import tracking

    tracking.start(notebook, params=params, tags=tags)
    try:
        yield
    except BaseException:
        tracking.finish("FAILED")
        raise
    tracking.finish()


def wrap(model: nn.Module, group: Group, find_unused_parameters: bool = False) -> nn.Module:
    """`model` under DistributedDataParallel in a group (rank 0's weights copied to all), else itself."""
    if not group.distributed:
        return model
    ids = [group.device.index] if group.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def batch_norm(norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` in training mode with the statistics of the global batch, so N processes normalise
    as one; running statistics updated as `_BatchNorm` does. Only for inputs that need no gradient."""
    if x.requires_grad:
        raise NotImplementedError(
            "global batch statistics of a tensor that needs gradients: use nn.SyncBatchNorm "
            "(GPUs), or a single process"
        )
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = all_sum(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device))
    mean = all_sum(x.sum(dims)) / count
    var = all_sum(((x - mean.view(shape)) ** 2).sum(dims)) / count
    if norm.track_running_stats:
        with torch.no_grad():
            norm.num_batches_tracked += 1
            momentum = norm.momentum
            if momentum is None:  # a cumulative average, as _BatchNorm
                momentum = 1.0 / float(norm.num_batches_tracked)
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
            unbiased = var * count / (count - 1).clamp_min(1)
            norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + norm.eps)
    if norm.affine:
        y = y * norm.weight.view(shape) + norm.bias.view(shape)
    return y


def launch(
    fn: Callable[..., Any],
    args: tuple,
    processes: int,
    on_message: Callable[[Any], None] | None = None,
) -> Any:
    """Run picklable `fn(*args)` in `processes` spawned processes (a forked OpenMP or CUDA runtime can
    deadlock) forming one group; return rank 0's result, passing what it `send`s to `on_message`.
    The caller never joins (a kernel would keep the group, wait on a failed worker, share its MLflow
    run); `args` travel in shared memory; a failure in any process raises here with its traceback."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    context = torch.multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    threads = max(1, torch.get_num_threads() // processes)
    spawned = torch.multiprocessing.start_processes(
        _process,
        args=(fn, args, processes, _free_port(), queue, threads),
        nprocs=processes,
        join=False,
        start_method="spawn",
    )
    result = []

    def receive() -> None:
        kind, payload = pickle.loads(queue.get())
        if kind == "result":
            result.append(payload)
        elif on_message is not None:
            on_message(payload)

    try:
        finished = False
        while not finished:
            if not queue.empty():
                receive()
                continue
            finished = spawned.join(timeout=0.2)
        while not queue.empty():  # what came in after the last look
            receive()
    except BaseException:  # an interrupted kernel, a failed `on_message`: stop them all
        for process in spawned.processes:
            if process.is_alive():
                process.terminate()
        for process in spawned.processes:
            process.join()
        raise
    return result[0] if result else None


def send(message: Any) -> None:
    """From rank 0 of a group `launch` started, hand `message` to `on_message`; elsewhere, a no-op."""
    if _launcher_queue is not None and (not active() or dist.get_rank() == 0):
        # Plain pickle: tensors travel inside the message, not as handles to this process's
        # shared memory, which would vanish when it exits.
        _launcher_queue.put(pickle.dumps(("message", message)))


def _process(rank, fn, args, size, port, queue, threads) -> None:
    global _launcher_queue
    _launcher_queue = queue
    # without this each process would start one thread per core and N would fight over them
    torch.set_num_threads(threads)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        result = fn(*args)
        if rank == 0:
            queue.put(pickle.dumps(("result", result)))
    finally:
        teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
