"""Retrieval metrics: ranks of a similarity matrix, Recall@K, median and mean rank. With several
correct items per query the rank is that of the first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

KS = (1, 5, 10)


def retrieval_ranks(similarity, targets: Sequence | None = None) -> np.ndarray:
    """1-based rank of the first correct item per query row. `targets[i]`: the correct column or
    columns of row i (default: the diagonal). Ties count against the model, so a constant matrix
    ranks every query last."""
    sim = np.asarray(similarity, dtype=float)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a 2-D [queries, items] matrix, got shape {sim.shape}")
    if targets is None:
        if sim.shape[0] > sim.shape[1]:
            raise ValueError(f"no targets given and {sim.shape} has no full diagonal")
        targets = range(sim.shape[0])
    if len(targets) != sim.shape[0]:
        raise ValueError(f"{len(targets)} targets for {sim.shape[0]} queries")
    correct = np.zeros(sim.shape, dtype=bool)
    for row, target in enumerate(targets):
        correct[row, np.atleast_1d(np.asarray(target, dtype=int))] = True
    if not correct.any(axis=1).all():
        raise ValueError("every query needs at least one correct item")
    best = np.where(correct, sim, -np.inf).max(axis=1, keepdims=True)
    return 1 + ((sim >= best) & ~correct).sum(axis=1)


def retrieval_scores(
    similarity, targets: Sequence | None = None, ks: Iterable[int] = KS
) -> dict[str, float]:
    """`recall_at_K` (share of queries whose first correct item ranks within K), `median_rank`,
    `mean_rank`, from a [queries, items] similarity matrix (see `retrieval_ranks`)."""
    ranks = retrieval_ranks(similarity, targets)
    scores = {f"recall_at_{k}": float((ranks <= k).mean()) for k in ks}
    scores.update(median_rank=float(np.median(ranks)), mean_rank=float(ranks.mean()))
    return scores


def both_directions(
    similarity,
    query_rows: Sequence[int],
    item_rows: Sequence[int],
    names: tuple[str, str],
    ks: Iterable[int] = KS,
) -> dict[str, float]:
    """Scores of a [queries, items] matrix both ways (`{a}_to_{b}_recall_at_1`, ...); a pair is
    correct when `query_rows[i] == item_rows[j]`. `names` = (query side, item side)."""
    sim = np.asarray(similarity, dtype=float)
    query_rows, item_rows = np.asarray(query_rows), np.asarray(item_rows)
    if sim.shape != (len(query_rows), len(item_rows)):
        raise ValueError(
            f"similarity {sim.shape} does not match {len(query_rows)} queries x "
            f"{len(item_rows)} items"
        )
    a, b = names
    out = {}
    for (q, g), matrix, rows_q, rows_g in (
        ((a, b), sim, query_rows, item_rows),
        ((b, a), sim.T, item_rows, query_rows),
    ):
        targets = [np.flatnonzero(rows_g == r) for r in rows_q]
        scores = retrieval_scores(matrix, targets, ks)
        out.update({f"{q}_to_{g}_{k}": v for k, v in scores.items()})
    return out
