"""One training loop for every fusion method: same optimiser, budget, early stopping, seeds.

Inputs are whole tensors held in memory (features are small); batches are index slices of
them, so an epoch is a handful of tensor operations, never a Python loop over samples.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor, nn

from mmlab.core import progress
from mmlab.train import distributed
from mmlab.train.optim import adamw, check_schedule, lr_schedule

Inputs = Mapping[str, Tensor]


@dataclass
class Split:
    """One split of a fusion task: the inputs by modality, labels and (optionally) a group
    per sample for breakdowns (the hard-negative kind of the match task)."""

    inputs: dict[str, Tensor]
    labels: Tensor
    groups: list[str] | None = None

    def __post_init__(self):
        n = len(self.labels)
        for modality, x in self.inputs.items():
            if len(x) != n:
                raise ValueError(
                    f"modality {modality!r} has {len(x)} rows but there are {n} labels"
                )
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"{len(self.groups)} groups for {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return {m: x[index] for m, x in self.inputs.items()}, self.labels[index]


@dataclass
class TrainConfig:
    """The recipe shared by every method. Validation accuracy selects the epoch kept."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 5  # epochs without a better validation accuracy before stopping
    schedule: str = "constant"  # or "cosine": the learning rate decays to 0 over `epochs`
    warmup: float = 0.0  # epochs over which the learning rate rises linearly from 0 to `lr`
    seed: int = 0
    device: str = "cpu"
    compile: bool = False  # torch.compile the model (its `compile` says which parts)
    processes: int = 1  # training processes (DDP) that `fit` starts; see mmlab.train.distributed

    def __post_init__(self):
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes!r}")
        check_schedule(self.schedule)
        if not 0 <= self.warmup < self.epochs:
            raise ValueError(
                f"warmup must be in [0, epochs={self.epochs}) epochs, got {self.warmup!r}"
            )


@dataclass
class TrainResult:
    model: nn.Module  # with the weights of the best validation epoch
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_run: int = 0
    train_seconds: float = 0.0


def _to(inputs: Inputs, device: str) -> dict[str, Tensor]:
    return {m: x.to(device) for m, x in inputs.items()}


@torch.no_grad()
def predict(
    model: nn.Module, inputs: Inputs, batch_size: int = 1024, device: str = "cpu"
) -> Tensor:
    """Logits [N, C] for whole-tensor inputs, in eval mode, batch by batch."""
    model.eval()
    n = len(next(iter(inputs.values())))
    out = [
        model(_to({m: x[i : i + batch_size] for m, x in inputs.items()}, device)).float().cpu()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(out)


def scores(labels: Tensor, predicted: Tensor, groups: list[str] | None = None) -> dict[str, float]:
    """Accuracy, macro F1 and, with groups, accuracy per group (`accuracy/<group>`)."""
    y, p = labels.numpy(), predicted.numpy()
    result = {
        "accuracy": float((y == p).mean()),
        "f1": float(f1_score(y, p, average="macro", zero_division=0)),
    }
    if groups is not None:
        g = np.asarray(groups)
        for name in sorted(set(groups)):
            result[f"accuracy/{name}"] = float((y[g == name] == p[g == name]).mean())
    return result


def evaluate(model: nn.Module, split: Split, device: str = "cpu") -> dict[str, float]:
    return scores(
        split.labels, predict(model, split.inputs, device=device).argmax(-1), split.groups
    )


def fit(
    model: nn.Module,
    train: Split,
    validation: Split,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train with AdamW and cross-entropy; keep the weights of the best validation accuracy.

    Seeds the shuffling from `config.seed` (build the model under the same seed for a fully
    repeatable run: `torch.manual_seed(seed)` before `create`). `on_epoch(epoch, values)` is
    called after each epoch with that epoch's train loss and validation loss and accuracy.

    With `config.processes > 1` (and under torchrun) every global batch of `batch_size` rows
    is split over the processes (`mmlab.train.distributed`): the same steps as one process, up to
    rounding, except that dropout and the masked words are drawn per process.
    """
    if config.processes > 1 and not distributed.active():
        return _launch(model, train, validation, config, on_epoch)
    group = distributed.setup(config.device)
    device = group.device
    model.to(device)
    if config.compile:
        model.compile()
    # The objective depends on the batch (masked words only where a caption describes its
    # image): some parameters may go unused in one process's share.
    net = distributed.wrap(_Objective(model), group, find_unused_parameters=True)
    optimiser = adamw(model.parameters(), config.lr, config.weight_decay, device)
    per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = lr_schedule(
        optimiser, config.schedule, config.epochs * per_epoch, round(config.warmup * per_epoch)
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    history: dict[str, list[float]] = {
        "train_loss": [],
        "val_loss": [],
        "val_accuracy": [],
        "lr": [],  # at the end of the epoch
    }
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    start = time.perf_counter()
    epoch = 0
    bar = (
        progress.EpochBar(config.epochs, f"{type(model).__name__} seed {config.seed}")
        if group.main
        else None
    )
    for epoch in range(1, config.epochs + 1):
        net.train()
        order = torch.randperm(len(train), generator=generator)
        total = torch.zeros(2, dtype=torch.float64)  # task loss, method's own objective
        for i in range(0, len(train), config.batch_size):
            rows = order[i : i + config.batch_size]
            # a lone leftover sample: batch statistics need two (and every process a share)
            if len(rows) < max(2, group.size):
                continue
            x, y = train.take(distributed.shard(rows, group))
            x, y = _to(x, device), y.to(device)
            logits, auxiliary = net(x, y)
            loss = loss_fn(logits, y)
            optimiser.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients: weighted by its share of the rows, each
            # process's mean makes that average the gradient of the global batch's mean.
            share = len(y) * group.size / len(rows)
            (loss * share if auxiliary is None else loss * share + auxiliary).backward()
            optimiser.step()
            scheduler.step()
            total[0] += loss.item() * len(y)
            if auxiliary is not None:
                total[1] += auxiliary.item() * len(y)
        total = distributed.all_sum(total.to(device)).cpu()
        values = (
            _validate(model, validation, loss_fn, device) if group.main else None
        )  # rank 0 evaluates, every process follows its verdict
        accuracy, val_loss = distributed.broadcast(values, group)
        history["train_loss"].append(float(total[0]) / len(train))  # the task's loss alone
        if total[1]:  # the method's own objective, where it has one
            history.setdefault("train_auxiliary_loss", []).append(float(total[1]) / len(train))
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(accuracy)
        history["lr"].append(optimiser.param_groups[0]["lr"])
        if group.main:
            bar.update({"loss": history["train_loss"][-1], "val_accuracy": accuracy})
            if on_epoch:
                on_epoch(epoch, {k: v[-1] for k, v in history.items()})
        if accuracy > best:
            best, best_epoch, stale = accuracy, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    return TrainResult(model, history, best_epoch, epoch, time.perf_counter() - start)


class _Objective(nn.Module):
    """A training step's forward, `(logits, the method's own objective or None)`, as a module
    call, so that DistributedDataParallel sees it (DDP hooks `forward`, not other methods)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Inputs, y: Tensor) -> tuple[Tensor, Tensor | None]:
        if hasattr(self.model, "training_forward"):
            return self.model.training_forward(x, y)
        return self.model(x), None


def _validate(model, validation: Split, loss_fn, device) -> tuple[float, float]:
    """(accuracy, loss) on the validation split."""
    logits = predict(model, validation.inputs, device=device)
    accuracy = float((logits.argmax(-1) == validation.labels).float().mean())
    return accuracy, float(loss_fn(logits, validation.labels))


def _launch(model, train, validation, config, on_epoch) -> TrainResult:
    """`fit` on `config.processes` processes started here; this process keeps the result."""
    single = replace(config, processes=1)
    report = (lambda message: on_epoch(*message)) if on_epoch else None
    state, history, best_epoch, epochs_run, seconds = distributed.launch(
        _fit_process, (model, train, validation, single), config.processes, report
    )
    model.to(config.device).load_state_dict(state)
    return TrainResult(model, history, best_epoch, epochs_run, seconds)


def _fit_process(model, train, validation, config):
    """One process of `_launch`: rank 0 sends its epochs and returns the result."""
    # The arguments arrive in shared memory: the data is read by all, but each process
    # trains weights of its own.
    model = copy.deepcopy(model)
    result = fit(model, train, validation, config, on_epoch=_send_epoch)
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    return state, result.history, result.best_epoch, result.epochs_run, result.train_seconds


def _send_epoch(epoch: int, values: dict[str, float]) -> None:
    distributed.send((epoch, values))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def latency_ms(
    model: nn.Module, inputs: Inputs, batch_size: int = 1, repeats: int = 20, device: str = "cpu"
) -> float:
    """Median milliseconds of one forward pass on `batch_size` samples (after a warm-up)."""
    model.eval()
    batch = _to({m: x[:batch_size] for m, x in inputs.items()}, device)
    model(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))
