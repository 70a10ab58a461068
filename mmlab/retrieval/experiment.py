"""Methods x modality pairs x seeds in one table: chance, frozen features through CCA, trained
heads and (where scenes are known) the attribute oracle; each a nested run if one is active."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from mmlab.retrieval import baselines, oracle, pairs, train
from mmlab.retrieval.metrics import both_directions
from mmlab.retrieval.pairs import POOLED_ENCODERS, PairData, hard_negative_side, pair_data

ORACLE = "attribute_oracle"


@dataclass
class Outcome:
    scores: dict[str, float]
    similarity: np.ndarray  # [right items, left items] on the test split
    fit: train.FitResult | None = None


@dataclass
class Context:
    """What a method may use for one pair: the dataset, the pair's inputs, the recipe."""

    ds: object
    data: PairData
    config: train.TrainConfig
    hard_negatives: int = 0
    device: str = "cpu"
    _pooled: PairData | None = None

    def pooled(self) -> PairData:
        if self._pooled is None:
            encoders = {m: POOLED_ENCODERS[m] for m in self.data.modalities}
            self._pooled = pair_data(self.ds, self.data.pair, encoders, self.device)
        return self._pooled


def _scores(sim: np.ndarray, data: PairData) -> dict[str, float]:
    test = data.splits["test"]
    names = (test.right.modality, test.left.modality)
    return both_directions(sim, test.right.rows.numpy(), test.left.rows.numpy(), names)


def _random(ctx: Context, seed: int) -> Outcome:
    sim = baselines.random_similarity(ctx.data.splits["test"], seed)
    return Outcome(_scores(sim, ctx.data), sim)


def _cca(ctx: Context, seed: int) -> Outcome:
    pooled = ctx.pooled()
    sim = baselines.cca_similarity(pooled.splits["train"], pooled.splits["test"], seed=seed)
    return Outcome(_scores(sim, ctx.data), sim)


def _trained(ctx: Context, seed: int) -> Outcome:
    negatives = None
    if ctx.hard_negatives:
        if ctx.data.modalities[1] != "text":
            raise ValueError(f"hard negatives are captions: pair {ctx.data.pair} has no text")
        extractor = pairs.make_extractor("text", ctx.data.encoders["text"], ctx.device)
        negatives = hard_negative_side(ctx.ds, ctx.hard_negatives, extractor)
    fit = train.train_retrieval(ctx.data, replace(ctx.config, seed=seed), negatives)
    sim = train.similarity(fit.model, ctx.data.splits["test"]).numpy()
    return Outcome(_scores(sim, ctx.data), sim, fit)


METHODS: dict[str, Callable[[Context, int], Outcome]] = {
    "random": _random,
    "cca": _cca,
    "trained": _trained,
}


def check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown retrieval method(s) {unknown}; valid: {', '.join(METHODS)}")
    return list(methods)


@dataclass
class Results:
    runs: pd.DataFrame  # one row per pair x method x seed: test scores
    outcomes: dict[tuple[str, str, int], Outcome] = field(default_factory=dict)
    data: dict[str, PairData] = field(default_factory=dict)
    oracle_fits: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self, confidence: float = 0.95) -> pd.DataFrame:
        """Mean, std and t-interval over seeds of every metric, per pair and method."""
        from mmlab.core.stats import mean_ci

        rows = []
        metrics = [c for c in self.runs.columns if c not in ("pair", "method", "seed")]
        for (pair, method), group in self.runs.groupby(["pair", "method"], sort=False):
            for metric in metrics:
                values = group[metric].dropna().to_numpy()
                if len(values):
                    ci = mean_ci(values, confidence).row()
                    rows.append({"pair": pair, "method": method, "metric": metric, **ci})
        return pd.DataFrame(rows)

    def table(self, metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """Means over seeds: a row per pair and method, a column per metric."""
        wide = self.runs.drop(columns="seed").groupby(["pair", "method"], sort=False).mean()
        return wide if metrics is None else wide[[m for m in metrics if m in wide.columns]]

    def best_trained(self, pair: str) -> Outcome:
        """The trained outcome of `pair` whose validation score was best."""
        found = [
            (o.fit.history["val_mean_recall"].max(), s, o)
            for (p, m, s), o in self.outcomes.items()
            if p == pair and m == "trained"
        ]
        if not found:
            raise KeyError(f"no trained run for pair {pair!r}")
        return max(found, key=lambda t: (t[0], -t[1]))[2]


def run(
    ds,
    pairs: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    config: train.TrainConfig,
    hard_negatives: int = 0,
    encoders: dict | None = None,
    log: bool = True,
    progress: Callable[[str], None] | None = print,
) -> Results:
    """Every method on every pair under every seed, scored on the test split."""
    from mmlab import tracking

    check_methods(methods)
    rows, results = [], Results(pd.DataFrame())
    for pair in pairs:
        data = pair_data(ds, pair, encoders, config.device)
        results.data[pair] = data
        ctx = Context(ds, data, config, hard_negatives, config.device)
        for method in methods:
            for seed in seeds:
                with _maybe_child(
                    log, f"{pair}/{method}/seed={seed}", dict(pair=pair, method=method, seed=seed)
                ):
                    outcome = METHODS[method](ctx, seed)
                    if log:
                        tracking.log_metrics({f"test_{k}": v for k, v in outcome.scores.items()})
                        if outcome.fit is not None:
                            _log_fit(outcome.fit, config, data)
                results.outcomes[(pair, method, seed)] = outcome
                rows.append({"pair": pair, "method": method, "seed": seed, **outcome.scores})
                if progress:
                    progress(_line(pair, method, seed, outcome))
        fitted = _oracle(ds, data)
        if fitted is not None:
            scores, results.oracle_fits[pair] = fitted
            recall = {k: v for k, v in scores.items() if "_to_" in k}
            rows.append({"pair": pair, "method": ORACLE, "seed": 0, **recall})
            if log:
                tracking.log_metrics({f"oracle_{k}": v for k, v in scores.items()})
            if progress:
                progress(
                    f"{pair:12s} {ORACLE:17s} captions true of their scene "
                    f"{scores['own_fits']:.3f}, scenes fitting a caption "
                    f"{scores['fitting_scenes_mean']:.2f}"
                )
    results.runs = pd.DataFrame(rows)
    return results


def _oracle(ds, data: PairData):
    """The oracle for a pair with captions on data whose world knows its scenes; else None."""
    from mmlab.data import world_of

    world = world_of(ds["test"])
    if data.modalities[1] != "text" or not world.knows_scenes:
        return None
    test, scenes = data.splits["test"], world.scenes(ds["test"])
    names = (test.right.modality, test.left.modality)
    rows = test.right.rows.numpy()
    return oracle.oracle_scores(test.right.texts, rows, scenes, names=names, world=world)


def _maybe_child(log: bool, name: str, params: dict):
    import contextlib

    from mmlab import tracking

    return tracking.child_run(name, params=params) if log else contextlib.nullcontext()


def _log_fit(fit: train.FitResult, config: train.TrainConfig, data: PairData) -> None:
    from dataclasses import asdict

    from mmlab import tracking

    tracking.log_params(
        {**{k: v for k, v in asdict(config).items() if k != "seed"}, "encoders": data.encoders}
    )
    curves = {c: fit.history[c].tolist() for c in fit.history.columns if c != "epoch"}
    tracking.log_history(curves, start_step=1)
    tracking.log_metrics({"best_epoch": fit.best_epoch, "train_seconds": fit.seconds})


def _line(pair: str, method: str, seed: int, outcome: Outcome) -> str:
    q, g = pair.split("-")[::-1]
    s, fit = outcome.scores, outcome.fit
    head = " ".join(f"R@{k} {s[f'{q}_to_{g}_recall_at_{k}']:.3f}" for k in (1, 5, 10))
    extra = "" if fit is None else f"  (best epoch {fit.best_epoch}, {fit.seconds:.0f} s)"
    return f"{pair:12s} {method:17s} seed {seed}  {q}->{g} {head}{extra}"


def diagonal_block(sim: np.ndarray, rows, n: int) -> np.ndarray:
    """[n, n] block of a [captions, images] matrix: the first caption of each of the first n
    images against those images, so each row's match is on the diagonal."""
    first = np.unique(np.asarray(rows), return_index=True)[1][:n]
    return np.asarray(sim)[first][:, : len(first)]


def example_queries(texts: Sequence[str], rows, ids: Sequence[str], n: int, seed: int = 0):
    """`n` captions of distinct test images picked at random: (captions, their image ids)."""
    rows = np.asarray(rows)
    first = np.unique(rows, return_index=True)[1]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(first, size=min(n, len(first)), replace=False))
    return [texts[i] for i in chosen], [ids[rows[i]] for i in chosen]
