"""Encoders for every modality behind one registry, and the feature cache.
`create(modality, name, **options)` builds one, `available(modality)` lists the names, and
`mmlab.features.cache.features(...)` stores and reuses a split's features."""

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
