"""Fusion of modality features: methods behind one registry and the loop that trains them all.

    model = fusion.create("gated", {"image": 1280, "text": 384}, num_classes=2)
    result = fusion.train_fusion(model, train_split, validation_split, fusion.TrainConfig(epochs=20))

`fusion.input_form(name)` says whether a method takes pooled vectors or token-level inputs."""

from mmlab.fusion.methods import METHODS, FusionModule, InputSpec, available, create, input_form
from mmlab.fusion.train import (
    Split,
    TrainConfig,
    TrainResult,
    evaluate,
    latency_ms,
    parameter_count,
    predict,
    scores,
    train_fusion,
)

__all__ = [
    "METHODS",
    "FusionModule",
    "InputSpec",
    "Split",
    "TrainConfig",
    "TrainResult",
    "available",
    "create",
    "evaluate",
    "input_form",
    "latency_ms",
    "parameter_count",
    "predict",
    "scores",
    "train_fusion",
]
