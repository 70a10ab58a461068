"""The optimiser and the learning-rate schedules every training loop of mmlab uses."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from mmlab.core.registry import Registry


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, device
) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the fused update (CPU and CUDA): one kernel over all
    parameters instead of a dozen operations for each, which matters for small models whose
    whole step is short. The same update, up to the last bits of its arithmetic."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


# The learning rate's factor at a fraction `t` in [0, 1] of the steps after the warmup.
SCHEDULES = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(t: float) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def _cosine(t: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("linear")
def _linear(t: float) -> float:
    return 1.0 - t


def check_schedule(name: str) -> None:
    """A RegistryError (a ValueError) listing the valid names if `name` is none of them."""
    SCHEDULES.get(name)


def lr_schedule(
    optimiser: torch.optim.Optimizer, name: str, steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warmup over `warmup_steps`, then the schedule `name` over the rest. The warmup
    is what lets attention models take a higher learning rate: Adam's first steps, on
    second-moment estimates of a few batches, are too large for it (as in transformers)."""
    decay = SCHEDULES.get(name)
    rest = max(1, steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / rest))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
