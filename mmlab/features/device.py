"""Which torch device extractors run on: one rule for every encoder."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` (or None) means `MMLAB_DEVICE` if set, else CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        device = os.environ.get("MMLAB_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
