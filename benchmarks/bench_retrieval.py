"""Search speed: the index's batched top-k against a per-query Python loop over the gallery
(the embedded gallery's size: 300 images, 1500 caption queries), and FAISS's flat index against
the exact matrix product on 100k random vectors (same answers checked).

    python benchmarks/bench_retrieval.py [GALLERY] [LARGE]   # defaults 300 and 100000
"""

from __future__ import annotations

import sys
import time

import numpy as np

from mmlab.retrieval.index import ExactIndex, faiss_installed, make_index

DIM, K = 256, 5


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def loop_search(gallery: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """The baseline: score every gallery item in turn, then sort."""
    scores = [float(np.dot(query, item)) for item in gallery]
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(gallery_size: int = 300, large: int = 100_000) -> None:
    gallery, queries = unit(gallery_size, 0), unit(5 * gallery_size, 1)
    index = ExactIndex(gallery)
    batched = best_of(lambda: index.search(queries, K))
    few = queries[:100]  # the loop is slow: time it on fewer queries
    looped = best_of(lambda: [loop_search(gallery, q, K) for q in few], repeats=1)
    found = index.search(few, K)[1]
    assert all(list(found[i]) == loop_search(gallery, q, K) for i, q in enumerate(few[:20]))
    qps_batched, qps_loop = len(queries) / batched, len(few) / looped
    print(
        f"search {len(queries)} queries in {gallery_size} vectors (d={DIM}, k={K}): "
        f"index {qps_batched:,.0f} queries/s, per-query Python loop {qps_loop:,.0f} queries/s "
        f"-> x{qps_batched / qps_loop:.0f}"
    )
    if not faiss_installed():
        print("FAISS: not installed (pip install faiss-cpu), skipped")
        return
    big, probes = unit(large, 2), unit(1000, 3)
    exact, faiss = make_index(big, "exact"), make_index(big, "faiss")
    assert make_index(big, "auto").name == "faiss"
    t_exact = best_of(lambda: exact.search(probes, 10))
    t_faiss = best_of(lambda: faiss.search(probes, 10))
    same = (exact.search(probes, 10)[1] == faiss.search(probes, 10)[1]).mean()
    print(
        f"{large:,} vectors, {len(probes)} queries, k=10: exact {len(probes) / t_exact:,.0f} "
        f"queries/s, FAISS flat {len(probes) / t_faiss:,.0f} queries/s -> x{t_exact / t_faiss:.2f}; "
        f"same top-10 ids {same:.4f}"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
