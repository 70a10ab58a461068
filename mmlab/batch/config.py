"""Batch files: schema, validation, grid expansion and parameter hashing.
A batch file has an optional `name`, `defaults` for every notebook whose parameters cell
defines them, and `stages`, each with a `notebook`, `parameters`, a `grid` (one execution per
combination), `needs` (`${stage.run_id}` references) and Ray `resources`. Parameters layer as
defaults < stage < grid < `--set`. A relative notebook path is looked up from the file's
folder upwards, then in the workspace (`mmlab run` from a checkout, the file elsewhere). A stage
may carry a `search:` block instead of a grid (`SearchSpec`; `mmlab.batch.tune` runs it).
Everything is checked before anything runs, each stage's problems all at once: unknown keys,
the notebook, parameters it lacks, values unlike its defaults (`mmlab.batch.checks`), unknown
encoder, fusion method and decoder names. Errors name file, stage and key."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmlab.batch import checks
from mmlab.batch.job import Resources
from mmlab.core import parameters_cell, workspace

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+?)\.run_id\}")


class BatchError(ValueError):
    """A batch file that cannot run; the message names the file, the stage and the key."""


class ResourcesSpec(BaseModel):
    """What one execution of a stage needs, as Ray's `num_cpus` / `num_gpus` (fractions allowed)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cpus: float = Field(default=1, gt=0)
    gpus: float = Field(default=0, ge=0)


class SpaceSpec(BaseModel):
    """One searched parameter: `{type: float, low, high, log}`, `{type: int, low, high, step,
    log}` or `{type: categorical, choices: [...]}` (Optuna's distributions)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SpaceSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list 'choices'")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("a categorical parameter takes only 'choices'")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes 'low' and 'high', not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"'low' ({self.low:g}) must be below 'high' ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs 'low' above 0, got {self.low:g}")
        if self.log and self.step:
            raise ValueError("'step' and log: true do not go together (Optuna)")
        if self.type == "int":
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and value != int(value):
                    raise ValueError(f"an int parameter needs a whole '{key}', got {value:g}")
        return self

    def distribution(self) -> Any:
        """The Optuna distribution (imported here: the extra is needed only to search)."""
        from optuna import distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(list(self.choices or []))
        if self.type == "int":
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def example(self) -> Any:
        """A value of the space, for the type check against the notebook's default."""
        if self.type == "categorical":
            return (self.choices or [None])[0]
        return int(self.low) if self.type == "int" else float(self.low)


class SamplerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0


class PrunerSpec(BaseModel):
    """Optuna's median pruner on the curve `metric` the notebook logs with a step (per epoch):
    a trial whose value at a step is worse than the median of earlier trials' at that step
    stops, after `startup_trials` finished trials and `warmup_steps` steps of its own."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["median", "none"] = "median"
    metric: str | None = None
    startup_trials: int = Field(default=3, ge=0)
    warmup_steps: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _metric(self) -> PrunerSpec:
        if self.name != "none" and not self.metric:
            raise ValueError(
                "the pruner needs 'metric': the per-epoch metric the notebook logs with a step"
            )
        return self


class SaveSpec(BaseModel):
    """Where a search writes its best parameters: entry `entry` of the YAML file `path` (relative
    to the workspace), beside the entries other searches wrote there (`mmlab.batch.tune`)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    entry: str = Field(min_length=1)


class SearchSpec(BaseModel):
    """A stage's `search:` block: Optuna trials over `parameters`, each one execution."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, SpaceSpec] = Field(min_length=1)
    metric: str
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int = Field(default=12, ge=1)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec | None = None
    save: SaveSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        """`sampler: tpe` and `pruner: median` for the mappings with defaults."""
        if isinstance(data, dict):
            data = dict(data)
            for key in ("sampler", "pruner"):
                if isinstance(data.get(key), str):
                    data[key] = {"name": data[key]}
        return data


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notebook: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    needs: list[str] = Field(default_factory=list)
    # seconds one cell may run before the execution fails (a hung notebook frees its job)
    timeout: float | None = Field(default=None, gt=0)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    search: SearchSpec | None = None


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
    # in dependency order; a search stage has one execution: the trials' shared parameters
    stages: dict[str, list[Execution]]
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    searches: dict[str, SearchSpec] = field(default_factory=dict)  # stages with `search:`

    @property
    def executions(self) -> list[Execution]:
        """Every execution of the stages that are not searches (a search asks for its own)."""
        return [e for s, runs in self.stages.items() if s not in self.searches for e in runs]

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
    """A relative path is looked up from the batch file's folder upwards, then in the workspace
    it is run from."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for folder in dict.fromkeys([batch_dir, *batch_dir.parents, workspace.root()]):
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


def _expand(grid: dict[str, list[Any]]) -> list[tuple[str | None, dict[str, Any]]]:
    """(name, grid combination) pairs; no grid has a single unnamed one."""
    if not grid:
        return [(None, {})]
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [(",".join(f"{k}={_slug(v)}" for k, v in c.items()), c) for c in combos]


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", _text(value)).strip("_") or "_"


def _pydantic_problems(path: Path, error: ValidationError, stage: str | None = None) -> list[str]:
    lines = []
    where = f"stage {stage!r}: " if stage is not None else ""
    for issue in error.errors():
        loc = [str(p) for p in issue["loc"]]
        what = "unknown key" if issue["type"] == "extra_forbidden" else issue["msg"]
        what = what.removeprefix("Value error, ")
        lines.append(f"{path}: {where}key {'.'.join(loc) or '(top)'!r}: {what}")
    return lines


def _stage(path: Path, name: str, raw: Any) -> tuple[StageSpec | None, list[str]]:
    """The stage and its schema problems. A stage with bad keys is still read without them, so
    that its notebook and parameters are checked too (every problem of a stage at once)."""
    try:
        return StageSpec.model_validate(raw), []
    except ValidationError as error:
        problems = _pydantic_problems(path, error, stage=name)
        if not isinstance(raw, dict):
            return None, problems
        bad = {str(issue["loc"][0]) for issue in error.errors() if issue["loc"]}
        kept = {k: v for k, v in raw.items() if k not in bad}
        try:
            return StageSpec.model_validate(kept), problems
        except ValidationError:  # no notebook, or a key that depends on a bad one
            return None, problems


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
            spec_or_none, found = _stage(path, str(name), stage)
            problems += found
            if spec_or_none is not None:
                stages[str(name)] = spec_or_none
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
        if stage.search is not None:
            problems += _search_shape(path, name, stage, spec.stages)
        found = _find_notebook(stage.notebook, path.parent.resolve())
        if found is None:
            problems.append(
                f"{path}: stage {name!r}: key 'notebook': {stage.notebook!r} not found "
                f"(looked from {path.parent.resolve()} upwards and in the workspace "
                f"{workspace.root()})"
            )
            continue
        try:
            defined[name] = notebook_parameters(found)
        except BatchError as error:
            problems.append(f"{path}: stage {name!r}: {error}")
            continue
        notebooks[name] = found
        for source, keys in (("parameters", stage.parameters), ("grid", stage.grid)):
            problems += [
                _undefined(path, name, source, key, stage.notebook, defined[name])
                for key in keys
                if key not in defined[name]
            ]
        problems += _value_problems(path, name, stage, found, defined[name], spec, overrides)
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
        resources = Resources(stage.resources.cpus, stage.resources.gpus)
        runs = [
            Execution(
                name,
                combo_name or name,
                notebooks[name],
                {**base, **combo, **mine},
                tuple(stage.needs),
                stage.timeout,
                resources,
            )
            for combo_name, combo in _expand(grid)
        ]
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
    searches = {n: s.search for n, s in spec.stages.items() if s.search is not None}
    return Batch(batch_name, path, stages, needs, searches)


def _search_shape(
    path: Path, name: str, stage: StageSpec, stages: dict[str, StageSpec]
) -> list[str]:
    """What a search stage may not be: a grid too, or a stage other stages need."""
    problems = []
    where = f"{path}: stage {name!r}"
    if stage.grid:
        problems.append(
            f"{where}: key 'grid': a stage with 'search' has no grid: search a categorical "
            f"parameter instead (search.parameters.NAME: {{type: categorical, choices: [...]}})"
        )
    for key in stage.search.parameters if stage.search else ():
        if key in stage.parameters:
            problems.append(
                f"{where}: key 'search.parameters.{key}': also set in 'parameters': keep one"
            )
    for other, spec in stages.items():
        if name in spec.needs:
            problems.append(
                f"{path}: stage {other!r}: key 'needs': {name!r} is a search, which no stage "
                f"can need: give the stage the tuned values in its 'parameters'"
            )
    return problems


def _undefined(path: Path, name: str, where: str, key: str, notebook: str, defined: set) -> str:
    return (
        f"{path}: stage {name!r}: key '{where}.{key}': {notebook} does not define {key!r} in its "
        f"parameters cell (it defines: {', '.join(sorted(defined)) or 'nothing'})"
    )


def _value_problems(
    path: Path,
    name: str,
    stage: StageSpec,
    notebook: Path,
    defined: set[str],
    spec: BatchSpec,
    overrides: list[tuple[str | None, str, Any]],
) -> list[str]:
    """Values unlike the notebook's defaults and unknown registry names, for every place a value
    of this stage comes from: defaults, parameters, grid, search, `--set`."""
    defaults = parameters_cell.defaults(notebook)
    notes = checks.comments(notebook)
    values: list[tuple[str, str, Any]] = [
        (f"key 'defaults.{k}'", k, v) for k, v in spec.defaults.items() if k in defined
    ]
    values += [(f"key 'parameters.{k}'", k, v) for k, v in stage.parameters.items()]
    values += [(f"key 'grid.{k}'", k, v) for k, vs in stage.grid.items() for v in vs]
    values += [
        (f"--set {k}", k, v) for s, k, v in overrides if (s is None and k in defined) or s == name
    ]
    problems = []
    for label, key, value in values:
        if key not in defined:
            continue  # reported as a parameter the notebook lacks
        problem = checks.value_problem(value, defaults.get(key), notes.get(key, ""))
        if problem:
            problems.append(f"{path}: stage {name!r}: {label}: {problem}")
        spelled = label.removeprefix("key ").strip("'")  # as the file spells the key
        try:
            found = checks.name_problems(notebook, key, value, spelled)
        except Exception:  # a family that cannot load here (a missing extra): the kernel says so
            found = []
        problems += [f"{path}: stage {name!r}: {p}" for p in found]
    for key, space in (stage.search.parameters if stage.search else {}).items():
        if key not in defined:
            problems.append(
                _undefined(path, name, "search.parameters", key, stage.notebook, defined)
            )
            continue
        problem = checks.value_problem(space.example(), defaults.get(key), notes.get(key, ""))
        if problem:
            problems.append(f"{path}: stage {name!r}: key 'search.parameters.{key}': {problem}")
    return problems
