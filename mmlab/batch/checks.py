"""Checks of a batch file's values before anything runs: a value whose type differs from the
notebook's default, and an encoder, fusion method or caption decoder name that no registry
knows. Each check returns problem texts (without file and stage, which the caller adds).

Type rule: a value must be of the default's kind (text, number, true/false, list, mapping);
ints and floats mix, None stands for anything (and anything for a None default), and a scalar
and a list of that scalar stand for one another (`seeds: 3` or `seeds: [0, 4]`). A text where
the default is not one is also taken when the parameter's comment names it in quotes
(`train_stages = 0  # k, or "all"`). The registries are imported only when a stage sets a key
that names their members: they load torch."""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat

# in this order: a bool is an int too
KINDS = (
    (type(None), "none"),
    (bool, "true/false"),
    ((int, float), "a number"),
    (str, "a text"),
    ((list, tuple), "a list"),
    (dict, "a mapping"),
)


def _kind(value: Any) -> str:
    for types, kind in KINDS:
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _describe(value: Any) -> str:
    kind = _kind(value)
    if kind == "a list" and value:
        inner = {_kind(v) for v in value}
        if len(inner) == 1:
            return f"a list of {next(iter(inner)).removeprefix('a ')}s"
    return kind


def comments(notebook: Path) -> dict[str, str]:
    """The comment on each `name = ...` line of the parameters cell (names without one left out)."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            break
    else:
        return {}
    found: dict[str, str] = {}
    lines = cell.source.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(cell.source).readline))
    except (tokenize.TokenError, SyntaxError):
        return {}
    for token in tokens:
        if token.type == tokenize.COMMENT:
            line = lines[token.start[0] - 1]
            match = re.match(r"\s*([A-Za-z_]\w*)\s*(?::[^=]*)?=", line)
            if match:
                found[match.group(1)] = token.string
    return found


def value_problem(value: Any, default: Any, comment: str = "") -> str | None:
    """Why `value` cannot stand where the parameters cell has `default`, or None."""
    if value is None or default is None:
        return None
    want, got = _kind(default), _kind(value)
    if want == got:
        if want == "a list" and default and value:
            inner = {_kind(d) for d in default} - {"none"}
            if len(inner) == 1:
                (kind,) = inner
                for item in value:
                    if _kind(item) not in (kind, "none"):
                        return f"{item!r} in the list is {_kind(item)}, expected {kind}"
        return None
    if want == "a list" and default and {_kind(d) for d in default} == {got}:
        return None  # a scalar where a list of them is expected
    if got == "a list" and value and {_kind(v) for v in value} == {want}:
        return None  # a list of what the default is one of
    if got == "a text" and (f'"{value}"' in comment or f"'{value}'" in comment):
        return None  # the comment names this text as an alternative
    return f"{value!r} is {got}, but the notebook's default {default!r} is {_describe(default)}"


def _member_problems(registry: Any, spec: Any, where: str) -> list[str]:
    from mmlab.features.registry import parse_encoder

    try:
        name, options = parse_encoder(spec)
    except ValueError as error:
        return [f"{where}: {error}"]
    if name not in registry:
        return [
            f"{where}: unknown {registry.kind} {name!r}; valid names: {', '.join(registry.names())}"
        ]
    takes = registry.options(name)
    unknown = sorted(set(options or {}) - set(takes)) if takes is not None else []
    if unknown:
        return [
            f"{where}: {registry.kind} {name!r} takes no option {', '.join(map(repr, unknown))}"
            f" (it takes: {', '.join(takes) or 'none'})"
        ]
    return []


def _encoders(value: Any, key: str, allowed_extra: dict[str, set[str]] | None = None) -> list[str]:
    from mmlab.features.registry import ENCODERS, MODALITIES

    if not isinstance(value, dict):
        return []  # the type check reports it
    problems = []
    for modality, specs in value.items():
        if modality not in ENCODERS:
            problems.append(
                f"key '{key}.{modality}': unknown modality {modality!r}; valid names: "
                f"{', '.join(MODALITIES)}"
            )
            continue
        for spec in specs if isinstance(specs, list) else [specs]:
            if isinstance(spec, str) and spec in (allowed_extra or {}).get(modality, set()):
                continue
            problems += _member_problems(ENCODERS[modality], spec, f"key '{key}.{modality}'")
    return problems


def _token_encoders(value: Any, key: str) -> list[str]:
    from mmlab.fusion.inputs import VOCAB

    return _encoders(value, key, {"text": {VOCAB}})


def _image_encoder(value: Any, key: str) -> list[str]:
    from mmlab.features.registry import ENCODERS

    return _member_problems(ENCODERS["image"], value, f"key '{key}'") if value else []


def _fusion_methods(value: Any, key: str) -> list[str]:
    from mmlab.fusion.methods import METHODS

    if not isinstance(value, list):
        return []
    problems = []
    for spec in value:
        if isinstance(spec, str) and spec.split(":")[0] == "unimodal":
            continue  # `unimodal:text` names a modality, not an option
        problems += _member_problems(METHODS, spec, f"key '{key}'")
    return problems


def _decoder(value: Any, key: str) -> list[str]:
    from mmlab.captioning.decoders import DECODERS

    if not isinstance(value, str) or value in DECODERS:
        return []
    return [
        f"key '{key}': unknown {DECODERS.kind} {value!r}; valid names: {', '.join(DECODERS.names())}"
    ]


# (key, does it apply to this notebook) -> check; `methods` means fusion methods in notebook 02 only
NAMED: dict[str, tuple[Callable[[Path], bool], Callable[[Any, str], list[str]]]] = {
    "encoders": (lambda nb: True, _encoders),
    "token_encoders": (lambda nb: True, _token_encoders),
    "image_encoder": (lambda nb: True, _image_encoder),
    "decoder": (lambda nb: "caption" in nb.stem, _decoder),
    "methods": (lambda nb: "fusion" in nb.stem, _fusion_methods),
}


def name_problems(notebook: Path, name: str, value: Any, label: str) -> list[str]:
    """Unknown registry names (or options) in `value`, the parameter `name` of a stage running
    `notebook`; `label` is the key as the batch file spells it (`parameters.encoders`)."""
    entry = NAMED.get(name)
    if entry is None or not entry[0](notebook):
        return []
    return entry[1](value, label)
