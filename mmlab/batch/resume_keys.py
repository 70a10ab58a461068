"""Content keys of parameters that name something changeable (a dataset, a model): the runner
adds them to the parameter hash via `content_keys`, so a run is reused only while they hold."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module


def _model_key(model: str) -> str:
    # the one resolver, without torch in the runner's process; "latest" -> the newest's URI
    return import_module("mmlab.tracking.models").model_uri(model)


def _dataset_key(source: str) -> str:
    return import_module("mmlab.data.identity").dataset_key(source)


# parameter name -> what its value stands for now (a string)
RESOLVERS: dict[str, Callable[[str], str]] = {"dataset": _dataset_key, "model": _model_key}


def content_keys(params: Mapping) -> dict[str, str]:
    """`{"<name>@content": key}` for each registered parameter present as a string. A value
    that cannot be resolved keys as its error, so the execution runs and reports it."""
    out = {}
    for name, resolve in RESOLVERS.items():
        value = params.get(name)
        if isinstance(value, str):
            try:
                out[f"{name}@content"] = resolve(value)
            except Exception as e:  # a missing dataset or model: the notebook will say so
                out[f"{name}@content"] = f"unresolved: {e.__class__.__name__}: {e}"
    return out
