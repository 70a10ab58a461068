"""The search index over unit vectors: top-k by inner product. `exact` is a matrix product,
`faiss` FAISS's flat index (same answers); `auto` takes FAISS from `FAISS_FROM` vectors."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

FAISS_FROM = 100_000


class ExactIndex:
    name = "exact"

    def __init__(self, vectors):
        self.vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each [queries, k], best first."""
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        scores, indices = (q @ self.vectors.T).topk(min(k, len(self)), dim=1)
        return scores.numpy(), indices.numpy()


class FaissIndex:
    name = "faiss"

    def __init__(self, vectors):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, indices = self.index.search(q, min(k, len(self)))
        return scores, indices


INDEXES = {"exact": ExactIndex, "faiss": FaissIndex}


def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None


def make_index(vectors, kind: str = "auto"):
    """An index of `vectors` [N, D]: `exact`, `faiss` or `auto` (see the module docstring)."""
    if kind == "auto":
        kind = "faiss" if faiss_installed() and len(vectors) >= FAISS_FROM else "exact"
    if kind not in INDEXES:
        raise KeyError(f"unknown index {kind!r}; valid: auto, {', '.join(INDEXES)}")
    if kind == "faiss" and not faiss_installed():
        raise ImportError("the faiss index needs faiss-cpu: pip install faiss-cpu")
    return INDEXES[kind](vectors)
