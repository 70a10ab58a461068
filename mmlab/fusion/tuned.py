"""Per-method settings found by a search, for notebook 02 (`tuned = "params/tuned/fusion.yaml"`).

The file is what `mmlab.batch.tune` writes for a search with `save:` (one entry per search):

    entries:
      concat:
        parameters: {lr: 0.004, weight_decay: 0.01, hidden: 96, dropout: 0.1, pooled_epochs: 8}
        search: {study: ..., parent_run_id: ..., metric: val_accuracy, value: 0.63, trials: 12}

An entry's `parameters` are notebook 02 parameters; they replace the shared ones for that method
alone (`compare.Recipe.tuned`). A method without an entry keeps the shared settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmlab.core import workspace

# notebook 02 parameters a method's entry may set, with the type each must have
SETTINGS = {
    "lr": float,
    "weight_decay": float,
    "hidden": int,
    "dropout": float,
    "patience": int,
    "epochs": int,
    "pooled_epochs": int,
}


def path_of(name: str | Path) -> Path:
    """A settings file's path: as given if absolute, else relative to the workspace."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else workspace.root() / path


def load(name: str | Path) -> dict[str, dict[str, Any]]:
    """`{method label: {parameter: value}}` of the settings file `name`; a ValueError naming
    the file, the method and the key for anything notebook 02 could not use."""
    path = path_of(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no per-method settings file (notebook 02's `tuned`); write it with "
            f"`mmlab run params/full.yaml`, or set tuned = '' for the shared settings"
        )
    document = yaml.safe_load(path.read_text()) or {}
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a mapping 'entries: {{method: {{parameters: ...}}}}'")
    out = {}
    for method, entry in entries.items():
        parameters = entry.get("parameters") if isinstance(entry, dict) else None
        if not isinstance(parameters, dict):
            raise ValueError(f"{path}: entry {method!r} has no mapping 'parameters'")
        out[str(method)] = {k: _checked(path, method, k, v) for k, v in parameters.items()}
    return out


def _checked(path: Path, method: str, key: str, value: Any) -> Any:
    if key not in SETTINGS:
        raise ValueError(
            f"{path}: entry {method!r}: {key!r} is not a per-method setting; valid keys: "
            f"{', '.join(SETTINGS)}"
        )
    kind = SETTINGS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: entry {method!r}: {key} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise ValueError(f"{path}: entry {method!r}: {key} must be a whole number, got {value!r}")
    return kind(value)
