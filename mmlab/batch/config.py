"""Batch files: schema, validation, grid expansion and parameter hashing.
A batch file has an optional `name`, `defaults` for every notebook whose parameters cell
defines them, and `stages`, each with a `notebook`, `parameters`, a `grid` (one execution per
combination), `needs` (`${stage.run_id}` references) and Ray `resources`. Parameters layer as
defaults < stage < grid < `--set`. A relative notebook path is looked up from the file's
folder upwards. Everything is checked before anything runs; errors name file, stage, key."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmlab.batch.job import Resources
from mmlab.core import parameters_cell

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+?)\.run_id\}")


class BatchError(ValueError):
    """A batch file that cannot run; the message names the file, the stage and the key."""


class ResourcesSpec(BaseModel):
    """What one execution of a stage needs, as Ray's `num_cpus` / `num_gpus` (fractions allowed)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cpus: float = Field(default=1, gt=0)
    gpus: float = Field(default=0, ge=0)


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notebook: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    needs: list[str] = Field(default_factory=list)
    # seconds one cell may run before the execution fails (a hung notebook frees its job)
    timeout: float | None = Field(default=None, gt=0)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)


class BatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageSpec]


@dataclass(frozen=True)
class Execution:
    """One Papermill run: a stage's notebook with one set of parameters."""

    stage: str
    name: str
    notebook: Path
    parameters: dict[str, Any]
    needs: tuple[str, ...]
    timeout: float | None = None  # seconds per cell
    resources: Resources = Resources()

    @property
    def label(self) -> str:
        return self.stage if self.name == self.stage else f"{self.stage}[{self.name}]"

    def references(self) -> set[str]:
        """Stages whose run id a parameter refers to with `${STAGE.run_id}`."""
        return {m for v in self.parameters.values() for m in REFERENCE.findall(_text(v))}

    def resolve(self, run_ids: dict[str, str]) -> dict[str, Any]:
        """Parameters with every `${STAGE.run_id}` replaced by that stage's run id."""
        return {k: _substitute(v, run_ids) for k, v in self.parameters.items()}


@dataclass
class Batch:
    name: str
    path: Path
    stages: dict[str, list[Execution]]  # in dependency order
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def executions(self) -> list[Execution]:
        return [e for runs in self.stages.values() for e in runs]

    def varying(self, stage: str) -> list[str]:
        """Parameter names whose values differ between the stage's executions."""
        runs = self.stages[stage]
        keys = sorted({k for e in runs for k in e.parameters})
        return [k for k in keys if len({_text(e.parameters.get(k)) for e in runs}) > 1]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _substitute(value: Any, run_ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: run_ids[m.group(1)], value)
    if isinstance(value, list):
        return [_substitute(v, run_ids) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, run_ids) for k, v in value.items()}
    return value


def parameter_hash(parameters: dict[str, Any]) -> str:
    """A stable hash of (resolved) parameters: key order and YAML spelling do not matter."""
    canonical = json.dumps(parameters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def notebook_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged `parameters` (Papermill's convention)."""
    try:
        return set(parameters_cell.names(notebook))
    except SyntaxError as error:
        raise BatchError(str(error)) from None


def parse_override(text: str) -> tuple[str | None, str, Any]:
    """`key=value` or `stage.key=value` -> (stage or None, key, YAML-parsed value)."""
    target, sep, raw = text.partition("=")
    if not sep or not target:
        raise BatchError(f"--set {text!r}: expected key=value or stage.key=value")
    stage, _, key = target.rpartition(".")
    return (stage or None), key, yaml.safe_load(raw) if raw else ""


def _find_notebook(relative: str, batch_dir: Path) -> Path | None:
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for folder in [batch_dir, *batch_dir.parents]:
        if (folder / path).is_file():
            return (folder / path).resolve()
    return None


def _stage_order(path: Path, stages: dict[str, StageSpec]) -> list[str]:
    """Stages in dependency order (file order where free); a cycle is an error naming it."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(trail[trail.index(name) :] + [name])
            raise BatchError(f"{path}: stage {name!r}: key 'needs' forms a cycle: {cycle}")
        state[name] = "visiting"
        for need in stages[name].needs:
            visit(need, [*trail, name])
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, [])
    return order


def _expand(stage: StageSpec) -> list[tuple[str | None, dict[str, Any]]]:
    """(name, grid combination) pairs; a stage without a grid has a single unnamed one."""
    if not stage.grid:
        return [(None, {})]
    keys = list(stage.grid)
    combos = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*stage.grid.values())
    ]
    return [(",".join(f"{k}={_slug(v)}" for k, v in c.items()), c) for c in combos]


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", _text(value)).strip("_") or "_"


def _pydantic_problems(path: Path, error: ValidationError, stage: str | None = None) -> list[str]:
    lines = []
    for issue in error.errors():
        loc = [str(p) for p in issue["loc"]]
        where = f"stage {stage!r}: " if stage is not None else ""
        what = "unknown key" if issue["type"] == "extra_forbidden" else issue["msg"]
        lines.append(f"{path}: {where}key {'.'.join(loc) or '(top)'!r}: {what}")
    return lines


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Batch:
    """Read, check and expand a batch file and `--set` overrides; all problems in one BatchError."""
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"{path}: batch file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise BatchError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise BatchError(f"{path}: expected a mapping with 'stages', got {type(raw).__name__}")
    problems: list[str] = []
    parsed = []
    for text in overrides:
        try:
            parsed.append(parse_override(text))
        except BatchError as error:
            problems.append(str(error))
    stages_raw = raw.get("stages")
    try:  # the top level first; each stage on its own so one bad stage hides no other
        top = BatchSpec.model_validate({**raw, "stages": {}})
    except ValidationError as error:
        problems += _pydantic_problems(path, error)
        top = BatchSpec(stages={})
    stages: dict[str, StageSpec] = {}
    if isinstance(stages_raw, dict):
        for name, stage in stages_raw.items():
            try:
                stages[str(name)] = StageSpec.model_validate(stage)
            except ValidationError as error:
                problems += _pydantic_problems(path, error, stage=str(name))
    elif stages_raw is not None or "stages" in raw:
        problems.append(f"{path}: key 'stages': expected a mapping of stage name -> stage")
    else:
        problems.append(f"{path}: key 'stages': missing (at least one stage is required)")
    spec = BatchSpec.model_construct(name=top.name, defaults=top.defaults, stages=stages)
    invalid_stages = isinstance(stages_raw, dict) and len(stages) < len(stages_raw)
    batch = _build(path, spec, parsed, problems, complete=not invalid_stages)
    if problems:
        raise BatchError("\n".join(dict.fromkeys(problems)))
    assert batch is not None
    return batch


def _build(
    path: Path,
    spec: BatchSpec,
    overrides: list[tuple[str | None, str, Any]],
    problems: list[str],
    complete: bool = True,
) -> Batch | None:
    """Check and expand `spec`, appending every problem to `problems` (None if any). With
    `complete` False, checks that need every stage are skipped rather than reported wrongly."""
    before = len(problems)
    if not spec.stages and complete and not problems:
        problems.append(f"{path}: key 'stages': at least one stage is required")
    for name, stage in spec.stages.items():
        if not NAME.match(name):
            problems.append(f"{path}: stage {name!r}: use letters, digits, '_', '-', '.'")
        for need in stage.needs:
            if need not in spec.stages:
                problems.append(
                    f"{path}: stage {name!r}: key 'needs': unknown stage {need!r} "
                    f"(stages: {', '.join(spec.stages)})"
                )
        for key, values in stage.grid.items():
            if not values:
                problems.append(f"{path}: stage {name!r}: key 'grid.{key}': empty list")
    for stage_name, key, _ in overrides:
        if stage_name is not None and stage_name not in spec.stages:
            problems.append(
                f"--set {stage_name}.{key}: unknown stage {stage_name!r} "
                f"(stages: {', '.join(spec.stages)})"
            )
    order: list[str] | None = None
    if all(n in spec.stages for s in spec.stages.values() for n in s.needs):
        try:
            order = _stage_order(path, spec.stages)
        except BatchError as error:
            problems.append(str(error))

    defined: dict[str, set[str]] = {}
    notebooks: dict[str, Path] = {}
    for name, stage in spec.stages.items():
        found = _find_notebook(stage.notebook, path.parent.resolve())
        if found is None:
            problems.append(
                f"{path}: stage {name!r}: key 'notebook': {stage.notebook!r} not found "
                f"(looked from {path.parent.resolve()} upwards)"
            )
            continue
        try:
            defined[name] = notebook_parameters(found)
        except BatchError as error:
            problems.append(f"{path}: stage {name!r}: {error}")
            continue
        notebooks[name] = found
        for source, keys in (("parameters", stage.parameters), ("grid", stage.grid)):
            for key in keys:
                if key not in defined[name]:
                    problems.append(
                        f"{path}: stage {name!r}: key '{source}.{key}': {stage.notebook} does "
                        f"not define {key!r} in its parameters cell "
                        f"(it defines: {', '.join(sorted(defined[name])) or 'nothing'})"
                    )
    every_notebook_read = complete and len(defined) == len(spec.stages)
    if every_notebook_read:  # else a key may be defined by a notebook that could not be read
        everywhere = set().union(*defined.values())
        for key in spec.defaults:
            if key not in everywhere:
                problems.append(
                    f"{path}: key 'defaults.{key}': no stage's notebook defines {key!r}"
                )
        for stage_name, key, _ in overrides:
            if stage_name is not None and stage_name not in spec.stages:
                continue
            scope = [stage_name] if stage_name else list(spec.stages)
            if not any(key in defined[s] for s in scope):
                where = f"stage {stage_name!r}'s notebook" if stage_name else "no stage's notebook"
                problems.append(f"--set {key}: {where} defines {key!r}")
    batch_name = spec.name or path.stem
    if not NAME.match(batch_name):
        problems.append(f"{path}: key 'name': {batch_name!r}: use letters, digits, '_', '-', '.'")
    if order is None or not every_notebook_read:
        return None

    stages: dict[str, list[Execution]] = {}
    for name in order:
        stage = spec.stages[name]
        mine = {k: v for s, k, v in overrides if (s is None and k in defined[name]) or s == name}
        grid = {k: v for k, v in stage.grid.items() if k not in mine}  # --set pins a grid axis
        base = {k: v for k, v in spec.defaults.items() if k in defined[name]}
        base.update(stage.parameters)
        runs = []
        for combo_name, combo in _expand(StageSpec(notebook=stage.notebook, grid=grid)):
            params = {**base, **combo, **mine}
            runs.append(
                Execution(
                    name,
                    combo_name or name,
                    notebooks[name],
                    params,
                    tuple(stage.needs),
                    stage.timeout,
                    Resources(stage.resources.cpus, stage.resources.gpus),
                )
            )
        stages[name] = runs
        for ref in sorted({r for run in runs for r in run.references()}):
            if ref not in stage.needs:
                problems.append(
                    f"{path}: stage {name!r}: '${{{ref}.run_id}}' refers to {ref!r}, "
                    f"which is not in its 'needs' ({', '.join(stage.needs) or 'empty'})"
                )
            elif len(spec.stages[ref].grid) and len(stages[ref]) > 1:
                problems.append(
                    f"{path}: stage {name!r}: '${{{ref}.run_id}}' is ambiguous: stage "
                    f"{ref!r} has {len(stages[ref])} executions (a grid)"
                )
    if len(problems) > before:
        return None
    needs = {n: tuple(spec.stages[n].needs) for n in order}
    return Batch(batch_name, path, stages, needs)
