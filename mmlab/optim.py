"""The optimiser every training loop of mmlab uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, device
) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the fused update (CPU and CUDA): one kernel over all
    parameters instead of a dozen operations for each. The same update; its arithmetic differs
    from the unfused one's in the last bits. Measured on a quiet 2-core machine: the optimiser
    step takes 0.13 ms fused against 0.47 ms for `concat`, whose whole training step is about
    2 ms (the other pooled methods are as small), 0.22 against 1.23 ms for grid_cross_attention,
    and, with gradient clipping, 0.54 against 1.72 ms for the 0.65M-parameter caption decoder."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
