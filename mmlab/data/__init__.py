"""Data: the embedded dataset, loaders for real formats (one schema), the content fingerprint,
the captioning vocabulary, and the world seam `world_of(ds)`, so no code outside needs to know
whether data is synthetic. Names load on first use, sparing generator workers `datasets`."""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "CAPTION_COLUMNS": "mmlab.data.loaders",
    "DataError": "mmlab.data.loaders",
    "LoadReport": "mmlab.data.loaders",
    "load_dataset": "mmlab.data.loaders",
    "fingerprint": "mmlab.data.fingerprinting",
    "default_dataset": "mmlab.data.synthetic",
    "scene_objects": "mmlab.data.synthetic",
    "CaptionsWorld": "mmlab.data.world",
    "SceneTruthUnknown": "mmlab.data.world",
    "SyntheticWorld": "mmlab.data.world",
    "World": "mmlab.data.world",
    "synthetic_world": "mmlab.data.world",
    "world_of": "mmlab.data.world",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmlab.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
