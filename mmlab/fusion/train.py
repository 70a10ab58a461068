"""Training every fusion method through `mmlab.train.loop`: same optimiser, budget, early stopping, seeds.
Inputs are in-memory tensors; batches are index slices, never a Python loop over samples."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor, nn

from mmlab.train import distributed, loop
from mmlab.train.optim import check_schedule

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

    def to(self, device) -> Split:
        """The split's tensors on `device` (the same split where they are there already)."""
        inputs = {m: x.to(device) for m, x in self.inputs.items()}
        return Split(inputs, self.labels.to(device), self.groups)


@dataclass
class TrainConfig:
    """The recipe shared by every method. Validation accuracy selects the epoch kept."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 5  # epochs without a better validation accuracy before stopping
    schedule: str = "constant"  # or "cosine": the learning rate decays to 0 over `epochs`
    warmup: float = 0.0  # share of all steps over which the learning rate rises from 0 to `lr`
    seed: int = 0
    device: str = "cpu"
    amp: bool | str = "auto"  # autocast (mmlab.train.loop.amp_dtype); "auto": on CUDA only
    compile: bool | str = False  # torch.compile the model (its `compile` says which parts)
    processes: int = 1  # training processes (DDP) the loop starts; see mmlab.train.distributed

    def __post_init__(self):
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes!r}")
        check_schedule(self.schedule)
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a share of all steps, in [0, 1); got {self.warmup!r}")


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


def train_fusion(
    model: nn.Module,
    train: Split,
    validation: Split,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train with AdamW and cross-entropy, keeping the weights of the best validation accuracy.
    Shuffling is seeded by `config.seed` (build the model under the same seed to repeat a run).
    `on_epoch(epoch, values)` gets train loss, validation loss and accuracy. With
    `config.processes > 1` global batches are split over processes: the same steps up to rounding,
    with dropout and masked words drawn per process."""
    name = f"{type(model).__name__} seed {config.seed}"
    recipe = loop.LoopConfig.of(config, monitor="val_accuracy", name=name)
    result = loop.fit(_study, model, (train, validation, config.batch_size), recipe, on_epoch)
    history = {k: [row[k] for row in result.history if k in row] for k in result.history[0]}
    del history["epoch"]
    return TrainResult(result.model, history, result.best_epoch, result.epochs_run, result.seconds)


def _study(model: nn.Module, train: Split, validation: Split, batch_size: int) -> loop.Study:
    loss_fn = nn.CrossEntropyLoss()
    resident = {"train": train}

    def prepare(group):
        # On a GPU the training split moves there once: a batch is then an index, not a copy.
        if group.device.type == "cuda":
            resident["train"] = train.to(group.device)

    def batches(generator, group):
        split = resident["train"]
        order = torch.randperm(len(split), generator=generator)
        for i in range(0, len(split), batch_size):
            rows = order[i : i + batch_size]
            # a lone leftover sample: batch statistics need two (and every process a share)
            if len(rows) < max(2, group.size):
                continue
            x, y = split.take(distributed.shard(rows, group))
            # DDP averages the processes' gradients: weighted by its share of the rows, each
            # process's mean makes that average the gradient of the global batch's mean.
            yield _to(x, group.device), y.to(group.device), len(y) * group.size / len(rows)

    def forward(net, batch):
        x, y, _ = batch
        return net(x, y)

    def loss(outputs, batch):
        (logits, auxiliary), (_, y, share) = outputs, batch
        task = loss_fn(logits.float(), y)  # autocast leaves logits in bfloat16
        objective = task * share if auxiliary is None else task * share + auxiliary
        extra = torch.zeros((), device=y.device) if auxiliary is None else auxiliary.detach()
        record = torch.stack([task.detach().double(), extra.double()]) * len(y)
        return objective, record

    def summarise(sums):
        values = {"train_loss": float(sums[0]) / len(train)}  # the task's loss alone
        if sums[1]:  # the method's own objective, where it has one
            values["train_auxiliary_loss"] = float(sums[1]) / len(train)
        return values

    def validate(device):
        accuracy, val_loss = _validate(model, validation, loss_fn, device)
        return {"val_loss": val_loss, "val_accuracy": accuracy}

    def network(group):
        # The objective depends on the batch (masked words only where a caption describes its
        # image): some parameters may go unused in one process's share.
        return distributed.wrap(_Objective(model), group, find_unused_parameters=True)

    return loop.Study(
        model,
        batches,
        forward,
        loss,
        summarise,
        validate,
        steps_per_epoch=math.ceil(len(train) / batch_size),
        network=network,
        prepare=prepare,
    )


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
