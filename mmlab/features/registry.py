"""Encoders by modality and name: a `Registry` per modality, `parse_encoder` for `"name:k=v,..."`.
Each modality's encoders live in a lazily imported module: a text query skips torchvision."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mmlab.core.registry import Registry, RegistryError

MODALITIES = ("image", "text", "audio", "video")

ENCODERS: dict[str, Registry] = {
    m: Registry(f"{m} encoder", modules=[f"mmlab.features.{m}"]) for m in MODALITIES
}


def encoders(modality: str) -> Registry:
    """The registry of `modality`'s encoders; an unknown modality lists the valid ones."""
    if modality not in ENCODERS:
        raise RegistryError(f"unknown modality {modality!r}; valid names: {', '.join(MODALITIES)}")
    return ENCODERS[modality]


def register(modality: str, *names: str) -> Callable[[Callable], Callable]:
    """Decorator: make `factory(**options)` available as `create(modality, name)`, receiving `name=`."""
    return encoders(modality).register(*names)


def lookup(modality: str, name: str) -> Callable:
    return encoders(modality).get(name)


def names(modality: str) -> list[str]:
    return encoders(modality).names()


def create(modality: str, name: str, **options: Any) -> Any:
    """The extractor `name` of `modality`; an unknown name or option: a RegistryError naming it."""
    return encoders(modality).create(name, **options)


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
