"""The one training loop of mmlab: every study (fusion, captioning, retrieval) trains through it.

    study = Study(model, batches, forward, loss, summarise, validate, steps_per_epoch)
    result = fit(build_study, model, args, LoopConfig(epochs=8, monitor="val_cider"), on_epoch)

A study says what is particular to it: its batches, the forward pass of a step, the loss and
what the loop records of it, and the validation metrics. The loop owns the rest: epochs
numbered from 1, AdamW and the learning-rate schedule (a warmup counted as a share of all
steps), autocast (with loss scaling for float16), `torch.compile`, gradient clipping, early
stopping on a validation metric (`mode` max or min) with the best state restored, the epoch
bar and progress record, and training on several processes (DDP, `mmlab.train.distributed`):
under torchrun on its group, or with `processes > 1` on processes it starts itself.

`build(model, *args) -> Study` is a module-level function so that a launched process can build
the study again from picklable arguments (closures do not cross a process boundary).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from mmlab.core import progress
from mmlab.train import distributed
from mmlab.train.optim import SCHEDULES, adamw, lr_schedule

ONE_CYCLE = "one_cycle"  # torch's OneCycleLR: a cosine warmup from lr/25, then a cosine decay
MODES = ("max", "min")

OnEpoch = Callable[[int, dict[str, Any]], None]


@dataclass
class LoopConfig:
    """The recipe of a run, in the loop's units: a study converts its `TrainConfig` to it."""

    epochs: int
    lr: float
    weight_decay: float
    monitor: str  # the validation metric that selects the kept epoch and stops the run
    mode: str = "max"  # "max": a higher `monitor` is better; "min": a lower one
    patience: int = 5  # epochs without a better `monitor` before stopping
    schedule: str = "constant"  # mmlab.train.optim.SCHEDULES, or "one_cycle"
    warmup: float = 0.0  # share of all steps (one_cycle: its pct_start)
    grad_clip: float | None = None  # max gradient norm (None: no clipping)
    seed: int = 0  # the batches' order
    dropout_seed: int | None = None  # seeds the global RNG with this + rank (None: untouched)
    device: str = "cpu"  # resolved ("cuda", "cpu", ...): the study resolves "auto"
    amp: bool | str = False  # autocast (`amp_dtype`); "auto": on CUDA only
    compile: bool | str = False  # torch.compile the study's `compiled` module; "auto": on CUDA
    processes: int = 1  # processes to start (DDP) when not already in a group
    time_budget: float | None = None  # seconds: stop after the epoch that crosses it
    timings: bool = False  # record train_seconds and epoch_seconds per epoch
    name: str = ""  # the epoch bar's description

    @classmethod
    def of(cls, config: Any, **settings: Any) -> LoopConfig:
        """The recipe in a study's config: each field of the same name, then `settings`."""
        shared = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return cls(**{**shared, **settings})

    def __post_init__(self):
        if self.schedule not in (*SCHEDULES.names(), ONE_CYCLE):
            valid = ", ".join(sorted([*SCHEDULES.names(), ONE_CYCLE]))
            raise ValueError(f"unknown schedule {self.schedule!r}; valid names: {valid}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a share of all steps, in [0, 1); got {self.warmup!r}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes!r}")
        for name in ("amp", "compile"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(
                    f"{name} must be True, False or 'auto', got {getattr(self, name)!r}"
                )


@dataclass
class Study:
    """What a study supplies to the loop.

    `batches(generator, group)`: one epoch's batches, this process's share of each global
    batch, already on `group.device`. `forward(net, batch)`: the step's outputs (under
    autocast). `loss(outputs, batch)`: `(objective to backward, record)`, a float64 vector
    the loop sums over the epoch and the processes; `summarise(sums)` turns it into the
    epoch's training metrics, the loss first (the bar shows it). `validate(device)`: the
    validation metrics, on rank 0 only (the others follow its verdict); a `samples` entry
    (a table of examples) reaches `on_epoch` but not the history.
    """

    model: nn.Module
    batches: Callable[[torch.Generator, distributed.Group], Iterable[Any]]
    forward: Callable[[nn.Module, Any], Any]
    loss: Callable[[Any, Any], tuple[Tensor, Tensor]]
    summarise: Callable[[Tensor], dict[str, float]]
    validate: Callable[[torch.device], dict[str, Any]]
    steps_per_epoch: int
    # the module the steps call: DDP-wrapped in a group (default: the model itself)
    network: Callable[[distributed.Group], nn.Module] | None = None
    compiled: nn.Module | None = None  # what `compile` compiles (default: the model)
    prepare: Callable[[distributed.Group], None] | None = None  # after the model is on device


@dataclass
class LoopResult:
    model: nn.Module | None  # with the weights of the best epoch, in eval mode
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per epoch, from 1
    best_epoch: int = 0
    best_score: float = math.nan
    epochs_run: int = 0
    stopped_early: bool = False  # patience ran out
    seconds: float = 0.0


def on_for(device: torch.device | str, setting: bool | str) -> bool:
    """Whether `amp` or `compile` is on: True / False, or "auto": on CUDA, off elsewhere."""
    return torch.device(device).type == "cuda" if setting == "auto" else bool(setting)


def amp_dtype(device: torch.device | str, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype `amp` asks for on `device`: bfloat16, or float16 on GPUs without
    bfloat16 (which then needs a `GradScaler`); None: full precision."""
    device = torch.device(device)
    if not on_for(device, amp):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device | str, amp: bool | str):
    """The forward pass's autocast context for `amp` on `device` (`amp_dtype`)."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device | str, amp: bool | str) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast (its gradients underflow); bfloat16 has float32's range
    and needs none: then the scaler is disabled and passes everything through unchanged."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device, amp) == torch.float16)


def warmup_steps(warmup: float, steps: int) -> int:
    """Whole steps of a warmup of `warmup` (a share of `steps`): at least one when asked for.
    The tolerance keeps a share converted from whole epochs (1/14 of 14 epochs) whole."""
    return max(1, math.floor(warmup * steps + 1e-6)) if warmup > 0 else 0


def scheduler(optimiser, config: LoopConfig, steps: int):
    if config.schedule == ONE_CYCLE:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimiser,
            max_lr=config.lr,
            total_steps=steps,
            pct_start=config.warmup,
            anneal_strategy="cos",
        )
    return lr_schedule(optimiser, config.schedule, steps, warmup_steps(config.warmup, steps))


def fit(
    build: Callable[..., Study],
    model: nn.Module,
    args: tuple,
    config: LoopConfig,
    on_epoch: OnEpoch | None = None,
) -> LoopResult:
    """Train `build(model, *args)` (a `Study`) and keep the weights of its best epoch.

    `on_epoch(epoch, metrics)` is called on rank 0 after each epoch, numbered from 1, with
    that epoch's row of the history (and a study's `samples`). With `config.processes > 1`
    outside a process group, the run goes to that many processes started here
    (`distributed.launch`): rank 0's epochs reach `on_epoch` and its weights come back into
    `model`."""
    if config.processes > 1 and not distributed.active():
        return _launch(build, model, args, config, on_epoch)
    started = time.perf_counter()
    group = distributed.setup(config.device)
    device = group.device
    study = build(model, *args)
    model.to(device)
    if study.prepare is not None:
        study.prepare(group)
    if on_for(device, config.compile):
        (study.compiled or model).compile()
    net = study.network(group) if study.network else distributed.wrap(model, group)
    generator = torch.Generator().manual_seed(config.seed)  # the same order in every process
    if config.dropout_seed is not None:
        torch.manual_seed(config.dropout_seed + group.rank)  # each process its own draws
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = adamw(params, config.lr, config.weight_decay, device)
    scaler = grad_scaler(device, config.amp)
    schedule = scheduler(optimiser, config, max(config.epochs * study.steps_per_epoch, 1))
    better = (lambda a, b: a > b) if config.mode == "max" else (lambda a, b: a < b)
    result = LoopResult(None, best_score=-math.inf if config.mode == "max" else math.inf)
    best_state, stale = None, 0
    bar = progress.EpochBar(config.epochs, config.name) if group.main else None
    try:
        for epoch in range(1, config.epochs + 1):
            epoch_started = time.perf_counter()
            net.train()
            sums = torch.zeros((), dtype=torch.float64, device=device)
            for batch in study.batches(generator, group):
                with autocast(device, config.amp):
                    outputs = study.forward(net, batch)
                objective, record = study.loss(outputs, batch)
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(objective).backward()
                if config.grad_clip is not None:
                    scaler.unscale_(optimiser)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimiser)  # skipped when float16 gradients overflowed
                scaler.update()
                schedule.step()
                sums = sums + record
            trained = study.summarise(distributed.all_sum(sums).cpu())
            train_seconds = time.perf_counter() - epoch_started
            # rank 0 evaluates, every process follows its verdict
            values = distributed.broadcast(study.validate(device) if group.main else None, group)
            samples = values.pop("samples", None)
            row = {"epoch": epoch, **trained, **values, "lr": optimiser.param_groups[0]["lr"]}
            if config.timings:
                row["train_seconds"] = train_seconds
                row["epoch_seconds"] = time.perf_counter() - epoch_started
            result.history.append(row)
            result.epochs_run = epoch
            if better(row[config.monitor], result.best_score):
                result.best_score, result.best_epoch, stale = row[config.monitor], epoch, 0
                best_state = copy.deepcopy(
                    {k: v.detach().cpu() for k, v in model.state_dict().items()}
                )
            else:
                stale += 1
            if group.main:
                bar.update(
                    {"loss": next(iter(trained.values())), config.monitor: row[config.monitor]}
                )
                if on_epoch is not None:
                    metrics = {k: v for k, v in row.items() if k != "epoch"}
                    on_epoch(epoch, metrics if samples is None else {**metrics, "samples": samples})
            if stale >= config.patience:
                result.stopped_early = True
                break
            if config.time_budget and time.perf_counter() - started > config.time_budget:
                break
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.model = model
    result.seconds = time.perf_counter() - started
    return result


def _launch(build, model, args, config: LoopConfig, on_epoch) -> LoopResult:
    """`fit` on `config.processes` processes started here; this process keeps the result."""
    report = (lambda message: on_epoch(*message)) if on_epoch else None
    result, state = distributed.launch(
        _fit_process, (build, model, args, replace(config, processes=1)), config.processes, report
    )
    model.to(config.device).load_state_dict(state)
    model.eval()
    result.model = model
    return result


def _fit_process(build, model, args, config):
    """One process of `_launch`: rank 0 sends its epochs and returns the result."""
    # The arguments arrive in shared memory: the data is read by all, but each process
    # trains weights of its own.
    model = copy.deepcopy(model)
    result = fit(build, model, args, config, on_epoch=_send_epoch)
    result.model = None  # the weights travel as a state dict
    return result, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _send_epoch(epoch: int, metrics: dict[str, Any]) -> None:
    distributed.send((epoch, metrics))
