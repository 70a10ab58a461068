"""Notebook 02's loop: every method x seed under one recipe, each a nested MLflow run.
`run(...)` returns a `Comparison` (`summary`, `by_group`, `missing`); over several targets of
the label task, `by_target` and `missing_by_target`."""

from __future__ import annotations

import inspect
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from mmlab.core import stats
from mmlab.fusion import robustness as robust
from mmlab.fusion.base import PooledFusion
from mmlab.fusion.inputs import FusionData, parse_encoder
from mmlab.fusion.methods import create, input_form, method_class
from mmlab.fusion.train import (
    Split,
    TrainConfig,
    evaluate,
    latency_ms,
    parameter_count,
    train_fusion,
)

METRIC = "test_accuracy"
WITHOUT = f"{METRIC}_without_"  # + modality: test accuracy with that modality removed


@dataclass(frozen=True)
class MethodChoice:
    """A registry method with its options, under the label the table and MLflow show."""

    label: str
    name: str
    options: tuple[tuple[str, object], ...] = ()

    @property
    def form(self) -> str:
        return input_form(self.name)


def expand(methods: Iterable[str], modalities: Sequence[str]) -> list[MethodChoice]:
    """Method names to choices: `unimodal` becomes one baseline per modality, `unimodal:text` one;
    `name:key=value,...` sets options (`grid_cross_attention:masked_words=0`)."""
    choices = []
    for spec in methods:
        name, _, modality = spec.partition(":")
        method_class(name)  # unknown names fail here, listing the valid ones
        if name != "unimodal":
            options = parse_encoder(spec, what="method")[1]
            choices.append(MethodChoice(spec, name, tuple(options.items())))
            continue
        for m in [modality] if modality else modalities:
            if m not in modalities:
                raise ValueError(f"{spec!r}: modality {m!r} is not among {list(modalities)}")
            choices.append(MethodChoice(f"unimodal_{m}", name, (("modality", m),)))
    return choices


@dataclass(frozen=True)
class Recipe:
    """How one method is trained and built: the loop's recipe, the width and the dropout."""

    config: TrainConfig
    hidden: int
    dropout: float | None = None  # None: the method's default
    pooled_epochs: int | None = None  # the pooled methods' budget (None: config.epochs)
    is_tuned: bool = False  # settings of its own (`tuned`), not the shared ones

    def tuned(self, form: str, settings: Mapping[str, object]) -> Recipe:
        """This recipe for a method of input `form`, with `settings` (notebook parameter names)
        in place of the shared values. The budget is `pooled_epochs` for a pooled method (else
        `epochs`); patience is capped at it and a warmup keeps its length in epochs."""
        s = {**vars(self.config), "hidden": self.hidden, "dropout": self.dropout}
        s |= {"pooled_epochs": self.pooled_epochs, **settings}
        epochs = s["pooled_epochs"] if form == "pooled" and s["pooled_epochs"] else s["epochs"]
        config = replace(
            self.config,
            lr=s["lr"],
            weight_decay=s["weight_decay"],
            epochs=epochs,
            patience=min(s["patience"], epochs),
            warmup=self.config.warmup * self.config.epochs / epochs,
        )
        return Recipe(config, s["hidden"], s["dropout"], s["pooled_epochs"], bool(settings))

    def args(self, imperfections) -> tuple:
        """`run_one`'s arguments after (data, choice, seed)."""
        return self.config, self.hidden, imperfections, self.dropout


@dataclass
class Comparison:
    """Results of every method x seed: a row per run, curves and learned modality weights."""

    runs: pd.DataFrame
    histories: dict[tuple[str, int], dict[str, list[float]]] = field(default_factory=dict)
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)
    chance: float = 0.5
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # robustness, a row per level

    def robustness(self) -> pd.DataFrame:
        """`robustness.summarize` of the curves: per method, modality and imperfection."""
        return robust.summarize(self.curves)

    def summary(self, metric: str = METRIC, confidence: float = 0.95) -> pd.DataFrame:
        """Per method: n, mean, std, t-interval of `metric`, mean test_f1 and costs, and the paired
        (by seed) t-test p-value against the best method."""
        extra = ["test_f1", "n_parameters", "train_seconds", "latency_ms", "best_epoch"]
        table = stats.summarize(self.runs, "method", metric, confidence, extra=extra)
        best = self._per_seed(table["method"].iloc[0], metric)
        table["p_vs_best"] = [
            stats.paired_p_value(self._per_seed(m, metric), best) for m in table["method"]
        ]
        return table

    def _per_seed(self, method: str, metric: str) -> list[float]:
        rows = self.runs[self.runs["method"] == method].sort_values("seed")
        return rows[metric].tolist()

    @property
    def best_method(self) -> str:
        return str(self.summary()["method"].iloc[0])

    def by_group(self) -> pd.DataFrame:
        """Mean test accuracy per method (rows, best first): over all samples (`all`), then per
        sample group (columns; the match task's kinds); empty without groups."""
        columns = [c for c in self.runs.columns if c.startswith(f"{METRIC}/")]
        if not columns:
            return pd.DataFrame()
        table = self.runs.groupby("method", sort=False)[[METRIC, *columns]].mean()
        table.columns = ["all"] + [c.split("/", 1)[1] for c in columns]
        return table.loc[self.summary()["method"]]

    def missing(self) -> pd.DataFrame:
        """Mean test accuracy per method with every modality (`none` removed) and with each removed at
        test time; empty where no method was tested so."""
        columns = [c for c in self.runs.columns if c.startswith(WITHOUT)]
        if not columns:
            return pd.DataFrame()
        table = self.runs.groupby("method", sort=False)[[METRIC, *columns]].mean()
        table.columns = ["none"] + [c.removeprefix(WITHOUT) for c in columns]
        table.columns.name = "removed"
        return table.loc[self.summary()["method"]]


def by_target(comparisons: Mapping[str, Comparison]) -> pd.DataFrame:
    """Mean test accuracy of each method (rows) on each target (columns), chance level last."""
    means = {t: c.runs.groupby("method", sort=False)[METRIC].mean() for t, c in comparisons.items()}
    table = pd.DataFrame(means)
    table.loc["chance"] = [c.chance for c in comparisons.values()]
    table.columns.name = "target"
    return table


def missing_by_target(comparisons: Mapping[str, Comparison]) -> pd.DataFrame:
    """`Comparison.missing()` of every target, stacked: rows (target, method)."""
    tables = {t: c.missing() for t, c in comparisons.items()}
    tables = {t: table for t, table in tables.items() if not table.empty}
    if not tables:
        return pd.DataFrame()
    return pd.concat(tables, names=["target", "method"])


def all_runs(comparisons: Mapping[str, Comparison]) -> pd.DataFrame:
    """Every comparison's runs in one table, with a `target` column first."""
    table = pd.concat([c.runs.assign(target=t) for t, c in comparisons.items()], ignore_index=True)
    return table[["target", *table.columns.drop("target")]]


def with_modality_dropout(choices: Iterable[MethodChoice], p: float) -> list[MethodChoice]:
    """The choices with `modality_dropout=p` where the method takes it and sets none of its own."""
    out = []
    for c in choices:
        takes = "modality_dropout" in inspect.signature(method_class(c.name)).parameters
        if p and takes and "modality_dropout" not in dict(c.options):
            c = replace(c, options=(*c.options, ("modality_dropout", p)))
        out.append(c)
    return out


def accuracy_without(model, test: Split, device: str = "cpu") -> dict[str, float]:
    """`{WITHOUT + modality: accuracy}` of a pooled method with each modality replaced in turn by
    its missing token."""
    if not isinstance(model, PooledFusion) or len(test.inputs) < 2:
        return {}
    out = {}
    for removed in test.inputs:
        kept = {m: x for m, x in test.inputs.items() if m != removed}
        out[WITHOUT + removed] = evaluate(model, Split(kept, test.labels), device)["accuracy"]
    return out


def build(data: FusionData, choice: MethodChoice, hidden: int, dropout: float | None = None):
    """The model of `choice` for `data`; `dropout` None: the method's default (a `dropout=` in
    the choice's options wins over it)."""
    options = dict(choice.options)
    # A method that learns from captions (masked words) is told which class describes its image.
    if "described_class" in inspect.signature(method_class(choice.name)).parameters:
        options.setdefault("described_class", data.described_class)
    if dropout is not None:
        options.setdefault("dropout", dropout)
    return create(choice.name, data.specs[choice.form], data.num_classes, hidden=hidden, **options)


def run_one(
    data: FusionData,
    choice: MethodChoice,
    seed: int,
    config: TrainConfig,
    hidden: int,
    imperfections: robust.Imperfections | None = None,
    dropout: float | None = None,
) -> tuple[dict, dict[str, list[float]], dict[str, float] | None, pd.DataFrame]:
    """Train and test one method under one seed: (metrics row, curves, modality weights,
    robustness curves: empty without `imperfections` or for a token method). `dropout`: the
    model's (None: the method's default; a `dropout=` in the choice's options wins)."""
    train, val, test = (data.split(choice.form, s) for s in ("train", "validation", "test"))
    torch.manual_seed(seed)
    model = build(data, choice, hidden, dropout)
    result = train_fusion(model, train, val, replace(config, seed=seed))
    scores = evaluate(result.model, test, device=config.device)
    row = {f"test_{k}": v for k, v in scores.items()}
    row.update(accuracy_without(result.model, test, config.device))
    curves = pd.DataFrame()
    if imperfections is not None and isinstance(result.model, PooledFusion):
        curves = robust.curves(result.model, test, imperfections, config.device)
        row.update(robust.metrics(curves))
    row.update(
        n_parameters=parameter_count(result.model),
        train_seconds=result.train_seconds,
        latency_ms=latency_ms(result.model, test.inputs, device=config.device),
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
    )
    weights = None
    with torch.no_grad():
        result.model.eval()
        inputs = {m: x.to(config.device) for m, x in test.inputs.items()}
        alpha = result.model.modality_weights(inputs)
    if alpha is not None:
        weights = dict(zip(result.model.modalities, alpha.mean(0).tolist(), strict=True))
    return row, result.history, weights, curves


def run(
    data: FusionData,
    methods: Iterable[str],
    seeds: Sequence[int] = (0, 1, 2),
    config: TrainConfig | None = None,
    hidden: int = 128,
    log: bool = True,
    progress: Callable[[str], None] | None = print,
    workers: int | None = None,
    modality_dropout: float = 0.0,
    pooled_epochs: int | None = None,
    imperfections: robust.Imperfections | None = None,
    dropout: float | None = None,
    tuned: Mapping[str, Mapping[str, object]] | None = None,
) -> Comparison:
    """Every method x seed; with `log`, each a nested MLflow run (tags `fusion_method`, `seed`,
    `modalities`, `fusion_target`) with its metrics and validation curves.
    `modality_dropout`: for every pooled method, each also tested without each modality.
    `pooled_epochs`: the pooled methods' budget (None: `config.epochs`; patience capped, warmup
    kept in epochs): they peak early, the token method learns relations late. `workers`: processes
    of one thread (None: one per core on CPU, one on GPU), as these small models' steps are mostly
    per-operation overhead. Workers are spawned: scripts need a `__main__` guard, or `workers=1`.
    `imperfections` (`robustness.prepare`): every pooled method is also tested under them.
    `dropout`: every method's (None: each its default). `tuned`: per method label, settings that
    replace the shared ones for it alone (`mmlab.fusion.tuned`: lr, weight_decay, hidden, dropout,
    patience, epochs, pooled_epochs); a method without an entry keeps the shared ones."""
    config = config or TrainConfig()
    shared = Recipe(config, hidden, dropout, pooled_epochs)
    choices = with_modality_dropout(expand(methods, data.modalities), modality_dropout)
    recipes = {c: shared.tuned(c.form, (tuned or {}).get(c.label, {})) for c in choices}
    target = data.task.label_column if data.task.name == "label" else None
    jobs = [(choice, seed) for choice in choices for seed in seeds]
    results = {}
    trained = _train_all(data, jobs, recipes, workers, imperfections)
    for (choice, seed), (row, history, w, curve) in trained:
        modalities = _modalities(data, choice)
        if log:
            _log(choice, seed, modalities, recipes[choice], row, history, target)
        results[choice, seed] = (modalities, row, history, w, curve)
        if progress:
            progress(
                f"{choice.label:<22} seed {seed}: accuracy {row[METRIC]:.3f} "
                f"(epoch {row['best_epoch']}/{row['epochs_run']}, "
                f"{row['train_seconds']:.1f} s)"
            )
    rows, histories, weights, curves = [], {}, [], []
    for choice, seed in jobs:  # the table's order, whatever order the runs finished in
        modalities, row, history, w, curve = results[choice, seed]
        rows.append({"method": choice.label, "seed": seed, "modalities": modalities, **row})
        curves.append(curve.assign(method=choice.label, seed=seed))
        histories[(choice.label, seed)] = history
        weights += [
            {"method": choice.label, "seed": seed, "modality": m, "weight": v}
            for m, v in (w or {}).items()
        ]
    curves = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return Comparison(pd.DataFrame(rows), histories, pd.DataFrame(weights), _chance(data), curves)


def run_targets(
    data: FusionData, ds, targets: Sequence[str] | None, methods: Iterable[str], **options
) -> dict[str, Comparison]:
    """`run` once per target of the label task on the same features (`inputs.relabel`); any other
    task (`targets` None) is one comparison under the task's name."""
    from mmlab.fusion.inputs import relabel

    if data.task.name != "label" or targets is None:
        if targets and data.task.name != "label":
            raise ValueError(
                f"targets {list(targets)} are for the label task, not {data.task.name!r}"
            )
        return {data.task.name: run(data, methods, **options)}
    if not targets:
        raise ValueError("the label task needs at least one target")
    methods = list(methods)
    return {t: run(relabel(data, ds, t), methods, **options) for t in targets}


def _train_all(data, jobs, recipes, workers, imperfections=None):
    """Yield `((choice, seed), run_one(...))` as runs finish; `recipes`: each choice's `Recipe`."""
    config = next(iter(recipes.values())).config
    if workers is None:
        workers = (os.cpu_count() or 1) if torch.device(config.device).type == "cpu" else 1
    if config.processes > 1:  # each run starts its own processes, which use the cores
        workers = 1
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        for choice, seed in jobs:
            yield (choice, seed), run_one(data, choice, seed, *recipes[choice].args(imperfections))
        return
    for split in (s for form in data.splits.values() for s in form.values()):
        for x in (*split.inputs.values(), split.labels):
            x.share_memory_()  # workers map the tensors instead of receiving copies
    if imperfections is not None:
        imperfections.share_memory_()
    # token methods first: they take longest, and started last they would run on alone
    order = sorted(jobs, key=lambda job: job[0].form != "tokens")
    context = multiprocessing.get_context("spawn")  # a forked OpenMP runtime can deadlock
    with ProcessPoolExecutor(
        workers, context, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        futures = {
            pool.submit(run_one, data, *job, *recipes[job[0]].args(imperfections)): job
            for job in order
        }
        for future in as_completed(futures):
            yield futures[future], future.result()


def _log(choice, seed, modalities, recipe, row, history, target=None) -> None:
    from mmlab import tracking

    tags = {"fusion_method": choice.label, "seed": str(seed), "modalities": modalities}
    name = f"{choice.label}-seed{seed}"
    if target is not None:  # one notebook run compares methods on several targets
        tags["fusion_target"] = target
        name = f"{target}:{name}"
    params = {
        **tags,
        "input_form": choice.form,
        "hidden": recipe.hidden,
        "dropout": "default" if recipe.dropout is None else recipe.dropout,
        "tuned": recipe.is_tuned,
        **{f"option.{k}": v for k, v in choice.options},
        **{f"train.{k}": v for k, v in vars(recipe.config).items() if k != "seed"},
    }
    with tracking.child_run(name, tags=tags, params=params):
        tracking.log_metrics(row)
        tracking.log_history(history, start_step=1)


def _modalities(data: FusionData, choice: MethodChoice) -> str:
    options = dict(choice.options)
    return options.get("modality") or ",".join(data.specs[choice.form])


def _chance(data: FusionData) -> float:
    """Accuracy of always answering the most frequent test class."""
    labels = data.split(next(iter(data.splits)), "test").labels
    return float(labels.bincount().max() / len(labels))
