"""The optimiser every training loop of mmlab uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, device
) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the fused update (CPU and CUDA): one kernel over all
    parameters instead of a dozen operations for each, which matters for small models whose
    whole step is short. The same update, up to the last bits of its arithmetic."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
