"""The optimiser every training loop of mmlab uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, device
) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the fused update (CPU and CUDA): one kernel over all
    parameters instead of a dozen operations for each. Measured on this project's models with
    one or two CPU threads, the unfused step (with gradient clipping) took 9-13 ms a batch for
    the 0.65M-parameter caption decoder (4.5 ms fused) and 1.3 ms for grid_cross_attention
    (0.2 ms fused): a tenth of a training step, and more of the small pooled fusion methods'."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
