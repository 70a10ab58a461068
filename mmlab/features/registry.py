"""Encoders by modality and name: `register` adds a factory, `lookup` finds it."""

from __future__ import annotations

from collections.abc import Callable

MODALITIES = ("image", "text", "audio", "video")

_REGISTRY: dict[str, dict[str, Callable]] = {m: {} for m in MODALITIES}


def register(modality: str, *names: str):
    """Decorator: make `factory(**options)` available as `create(modality, name)`.

    A factory registered under several names receives the one asked for as `name=`.
    """

    def wrap(factory: Callable) -> Callable:
        for name in names:
            _REGISTRY[_check_modality(modality)][name] = factory
        return factory

    return wrap


def lookup(modality: str, name: str) -> Callable:
    known = _REGISTRY[_check_modality(modality)]
    if name not in known:
        raise KeyError(
            f"unknown {modality} encoder {name!r}; valid names: {', '.join(sorted(known))}"
        )
    return known[name]


def names(modality: str) -> list[str]:
    return sorted(_REGISTRY[_check_modality(modality)])


def _check_modality(modality: str) -> str:
    if modality not in _REGISTRY:
        raise KeyError(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
    return modality
