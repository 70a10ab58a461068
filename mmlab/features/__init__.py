"""Encoders for every modality behind one registry, and the feature cache.

    extractor = mmlab.features.create("image", "efficientnet_lite0", image_size=128)
    vectors = extractor.extract(pil_images)            # [N, 1280]
    grid = mmlab.features.create("image", "efficientnet_lite0", image_size=128,
                                 kind="grid", layer="mid").extract(pil_images)  # [N, 112, 8, 8]

`available(modality)` lists the names; `mmlab.features.cache.features(...)` stores and reuses
the features of a dataset split.
"""

from __future__ import annotations

from mmlab.features.base import KINDS, Extractor
from mmlab.features.device import resolve_device
from mmlab.features.registry import MODALITIES, create, names


def available(modality: str | None = None) -> list[str] | dict[str, list[str]]:
    """Encoder names of one modality, or of all of them as a dict."""
    if modality is None:
        return {m: names(m) for m in MODALITIES}
    return names(modality)


__all__ = ["KINDS", "MODALITIES", "Extractor", "available", "create", "resolve_device"]
