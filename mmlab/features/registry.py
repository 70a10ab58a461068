"""Encoders by modality and name: `register` adds a factory, `lookup` finds it, `parse_encoder`
reads the `"name:key=value,..."` form a notebook or batch file names one in.

Each modality's encoders live in the module of that name (`mmlab.features.text`, ...), imported
when the modality is first looked up: a text query does not pay for torchvision or librosa.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

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


def _encoders(modality: str) -> dict[str, Callable]:
    """The registered encoders of `modality`, its module imported (registering them) first."""
    importlib.import_module(f"mmlab.features.{_check_modality(modality)}")
    return _REGISTRY[modality]


def lookup(modality: str, name: str) -> Callable:
    known = _encoders(modality)
    if name not in known:
        raise KeyError(
            f"unknown {modality} encoder {name!r}; valid names: {', '.join(sorted(known))}"
        )
    return known[name]


def names(modality: str) -> list[str]:
    return sorted(_encoders(modality))


def _check_modality(modality: str) -> str:
    if modality not in _REGISTRY:
        raise KeyError(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
    return modality


def parse_encoder(
    spec: str | Mapping[str, Any], what: str = "encoder"
) -> tuple[str, dict[str, Any]]:
    """`"name"`, `"name:k=v,k=v"` (ints and floats converted) or `{"name": ..., **options}`;
    `what` names the thing in errors."""
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"{what} {dict(spec)!r} has no 'name' key")
        options = dict(spec)
        return str(options.pop("name")), options
    name, _, rest = str(spec).partition(":")
    options = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"{what} {spec!r}: option {part!r} is not key=value")
        options[key.strip()] = _number(value.strip())
    return name.strip(), options


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
