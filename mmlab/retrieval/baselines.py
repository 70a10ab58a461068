"""Baselines in the same table as the trained heads: chance, and frozen pretrained features with
no training, aligned by a linear CCA (scikit-learn) fitted on the training pairs."""

from __future__ import annotations

import numpy as np

from mmlab.retrieval.pairs import PairSplit

CCA_PAIRS = 3000  # training pairs the CCA is fitted on (NIPALS cost grows with them)


def random_similarity(split: PairSplit, seed: int = 0) -> np.ndarray:
    """[right items, left items] scores drawn at random: Recall@K = K / items on average."""
    return np.random.default_rng(seed).random((len(split.right), len(split.left)))


def _flat(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def cca_similarity(
    train: PairSplit, test: PairSplit, components: int = 32, pca: int = 128, seed: int = 0
) -> np.ndarray:
    """[right items, left items] cosine similarities after CCA of the pooled features. Each side is
    standardised and PCA-reduced to `pca` dimensions first, so CCA does not fit noise."""
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    left_idx, right_idx = (t.numpy() for t in train.positives())
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(left_idx))[:CCA_PAIRS]
    xl, xr = _flat(train.left.x)[left_idx[chosen]], _flat(train.right.x)[right_idx[chosen]]
    reducers = []
    for x in (xl, xr):
        n = min(pca, x.shape[1], len(x) - 1)
        reducers.append(make_pipeline(StandardScaler(), PCA(n, random_state=seed)).fit(x))
    zl, zr = reducers[0].transform(xl), reducers[1].transform(xr)
    k = min(components, zl.shape[1], zr.shape[1])
    cca = CCA(n_components=k, scale=False, max_iter=1000).fit(zl, zr)
    # project each side alone (CCA.transform wants both); PCA outputs are centred on train
    left = reducers[0].transform(_flat(test.left.x)) @ cca.x_rotations_
    right = reducers[1].transform(_flat(test.right.x)) @ cca.y_rotations_
    left /= np.linalg.norm(left, axis=1, keepdims=True) + 1e-12
    right /= np.linalg.norm(right, axis=1, keepdims=True) + 1e-12
    return right @ left.T
