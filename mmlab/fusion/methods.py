"""Fusion methods behind one registry: each maps a dict of modality inputs to class logits.

The pooled methods live in `mmlab.fusion.pooled`, the token method in
`mmlab.fusion.grid_attention`, what they share in `mmlab.fusion.base`.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmlab.core.registry import Registry
from mmlab.fusion import pooled
from mmlab.fusion.base import FusionModule, InputSpec
from mmlab.fusion.grid_attention import GridCrossAttention

__all__ = [
    "METHODS",
    "FusionModule",
    "InputSpec",
    "available",
    "create",
    "input_form",
    "method_class",
]

# Registered here rather than beside each class: pooled.py and grid_attention.py stay free of
# the registry (methods.py imports them, so a decorator there would import it back).
METHODS = Registry("fusion method")
for _name, _cls in (
    ("concat", pooled.Concat),
    ("weighted_sum", pooled.WeightedSum),
    ("attention", pooled.Attention),
    ("gated", pooled.Gated),
    ("tensor", pooled.TensorFusion),
    ("low_rank", pooled.LowRank),
    ("late", pooled.Late),
    ("cross_attention", pooled.CrossAttention),
    ("grid_cross_attention", GridCrossAttention),
    ("unimodal", pooled.Unimodal),
):
    METHODS.register(_name)(_cls)


def available() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[FusionModule]:
    """The class of method `name`; an unknown name is a RegistryError listing the valid ones."""
    return METHODS.get(name)


def input_form(name: str) -> str:
    """`"pooled"` or `"tokens"`: which inputs the method `name` needs."""
    return method_class(name).input_form


def create(
    name: str,
    dims: Mapping[str, int | InputSpec],
    num_classes: int = 2,
    hidden: int = 128,
    **options,
) -> FusionModule:
    """Build fusion method `name` for modalities `dims` (an int is a pooled width).

    `unimodal` needs `modality=`; other options are the method's own (e.g. `rank` of
    low_rank, `tensor_dim` of tensor, `heads`, `dropout`).
    """
    specs = {m: InputSpec.of(d) for m, d in dims.items()}
    return METHODS.create(name, specs, num_classes, hidden=hidden, **options)
