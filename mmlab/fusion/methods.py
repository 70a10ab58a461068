"""Fusion methods behind one registry: each maps a dict of modality inputs to class logits.

The pooled methods live in `mmlab.fusion.pooled`, the token method in
`mmlab.fusion.grid_attention`, what they share in `mmlab.fusion.base`.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmlab.fusion.base import FusionModule, InputSpec
from mmlab.fusion.grid_attention import GridCrossAttention
from mmlab.fusion.pooled import (
    Attention,
    Concat,
    CrossAttention,
    Gated,
    Late,
    LowRank,
    Tensor_,
    Unimodal,
    WeightedSum,
)

__all__ = [
    "METHODS",
    "FusionModule",
    "InputSpec",
    "available",
    "create",
    "input_form",
    "method_class",
]

METHODS: dict[str, type[FusionModule]] = {
    "concat": Concat,
    "weighted_sum": WeightedSum,
    "attention": Attention,
    "gated": Gated,
    "tensor": Tensor_,
    "low_rank": LowRank,
    "late": Late,
    "cross_attention": CrossAttention,
    "grid_cross_attention": GridCrossAttention,
    "unimodal": Unimodal,
}


def available() -> list[str]:
    return list(METHODS)


def method_class(name: str) -> type[FusionModule]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown fusion method {name!r}; valid names: {', '.join(METHODS)}"
        ) from None


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
    cls = method_class(name)
    specs = {m: InputSpec.of(d) for m, d in dims.items()}
    return cls(specs, num_classes, hidden=hidden, **options)
