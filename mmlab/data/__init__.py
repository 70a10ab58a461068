"""Data: the embedded dataset, loaders for real formats (one schema), the content fingerprint,
the captioning vocabulary, and the world seam `world_of(ds)`, so no code outside needs to know
whether data is synthetic. Names load on first use, sparing generator workers `datasets`."""

from __future__ import annotations

from importlib import import_module

_HOMES = {
    "loaders": ("CAPTION_COLUMNS", "DataError", "LoadReport", "load_dataset"),
    "fingerprinting": ("fingerprint",),
    "synthetic": ("default_dataset", "scene_objects"),
    "world": "CaptionsWorld SceneKinds SceneTruthUnknown SyntheticWorld World synthetic_world world_of".split(),
}
_EXPORTS = {name: f"mmlab.data.{module}" for module, names in _HOMES.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmlab.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
