"""Quick reads of what features capture: linear probes, 2-D projections, throughput timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmlab.features.base import real_steps


def as_vectors(features: torch.Tensor | np.ndarray, grid_cells: int | None = None) -> np.ndarray:
    """`[N, D]` as is; sequences averaged over real steps; grids averaged, or with `grid_cells=k`
    pooled to k x k and flattened (`[N, D*k*k]`), which keeps where things are."""
    x = torch.as_tensor(features).float()
    if x.ndim == 4 and grid_cells:
        x = torch.nn.functional.adaptive_avg_pool2d(x, grid_cells).flatten(1)
    elif x.ndim == 4:
        x = x.mean(dim=(2, 3))
    elif x.ndim == 3:  # padding rows are zero: average over the non-zero steps only
        steps = real_steps(x).unsqueeze(-1).float()
        x = (x * steps).sum(1) / steps.sum(1).clamp(min=1)
    elif x.ndim != 2:
        raise ValueError(f"features of shape {tuple(x.shape)}: expected 2, 3 or 4 dimensions")
    return x.numpy()


def linear_probe(
    train_x,
    train_y: Sequence,
    test_x,
    test_y: Sequence,
    *,
    grid_cells: int | None = None,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic regression on standardised `as_vectors(x, grid_cells)`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = as_vectors(train_x, grid_cells), as_vectors(test_x, grid_cells)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(
            f"features and labels differ in length: train {len(train_x)} vs {len(train_y)}, "
            f"test {len(test_x)} vs {len(test_y)}"
        )
    if len(set(train_y)) < 2:
        raise ValueError("the probe needs at least two classes among the training labels")
    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=max_iter, C=1.0, random_state=seed)
    )
    model.fit(train_x, list(train_y))
    return float(model.score(test_x, list(test_y)))


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(x)


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50:  # the usual first step: t-SNE on the top principal components
        x = PCA(n_components=min(50, len(x)), random_state=seed).fit_transform(x)
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    # For up to about a thousand points the exact gradient is faster than Barnes-Hut.
    method = "exact" if len(x) <= 1000 else "barnes_hut"
    tsne = TSNE(
        2, perplexity=perplexity, init="pca", max_iter=500, method=method, random_state=seed
    )
    return tsne.fit_transform(x)


PROJECTIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"pca": _pca, "tsne": _tsne}


def project(
    features, method: str = "pca", seed: int = 0, grid_cells: int | None = None
) -> np.ndarray:
    """A 2-D projection `[N, 2]` of (standardised) features by `method` (`pca` or `tsne`)."""
    if method not in PROJECTIONS:
        raise KeyError(f"unknown projection {method!r}; valid: {', '.join(PROJECTIONS)}")
    x = as_vectors(features, grid_cells)
    if len(x) < 3:
        raise ValueError(f"a projection needs at least 3 points, got {len(x)}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return PROJECTIONS[method](x, seed)


@dataclass
class Timed:
    """Features and how fast they came: `items_per_s` over `seconds` of wall time."""

    features: torch.Tensor
    seconds: float

    @property
    def items_per_s(self) -> float:
        return len(self.features) / max(self.seconds, 1e-9)


def timed(fn: Callable[[], torch.Tensor]) -> Timed:
    """Run `fn` (e.g. `lambda: extractor.extract(items)`) and time it."""
    start = time.perf_counter()
    out = fn()
    return Timed(out, time.perf_counter() - start)
