"""Figures of notebook 05: recall per pair and method, a similarity matrix, the top-k images of
a few queries with the true one marked, zero-shot accuracy. Each returns a matplotlib Figure."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def recall_bars(summary: pd.DataFrame, directions: dict[str, str], ks=(1, 5, 10)):
    """Recall@K (mean over seeds, t-interval as error bar) per method, one panel per pair;
    `directions` maps a pair to the metric prefix shown (e.g. "text_to_image")."""
    pairs = list(directions)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        rows = summary[summary["pair"] == pair]
        methods = list(dict.fromkeys(rows["method"]))
        width = 0.8 / len(ks)
        for j, k in enumerate(ks):
            metric = f"{directions[pair]}_recall_at_{k}"
            r = rows[rows["metric"] == metric].set_index("method").reindex(methods)
            err = np.vstack([r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]])
            x = np.arange(len(methods)) + j * width
            ax.bar(x, r["mean"], width, yerr=err, capsize=2, label=f"R@{k}")
        ax.set_xticks(
            np.arange(len(methods)) + width * (len(ks) - 1) / 2, methods, rotation=20, fontsize=8
        )
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{pair}: {directions[pair].replace('_', ' ')}", fontsize=9)
    axes[0][0].set_ylabel("test recall")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def similarity_matrix(sim: np.ndarray, row_label: str = "caption", col_label: str = "image"):
    """A square block of a similarity matrix: row i's match is column i (the diagonal)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    shown = ax.imshow(sim, cmap="viridis")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_xlabel(f"{col_label} (test)")
    ax.set_ylabel(f"{row_label} (first of each {col_label})")
    fig.tight_layout()
    return fig


def top_k_images(
    queries: Sequence[str],
    images: Sequence[Sequence],
    scores: Sequence[Sequence[float]],
    is_true: Sequence[Sequence[bool]],
):
    """One row per query: its top-k images, best first, the true one framed in green."""
    k = max(len(row) for row in images)
    fig, axes = plt.subplots(len(queries), k, figsize=(1.9 * k, 2.2 * len(queries)), squeeze=False)
    for r, query in enumerate(queries):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images[r]):
                ax.axis("off")
                continue
            ax.imshow(images[r][c])
            ax.set_title(f"{c + 1}: {scores[r][c]:.2f}", fontsize=8)
            colour, width = ("limegreen", 5) if is_true[r][c] else ("lightgrey", 1)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width)
        label = textwrap.fill(
            " ".join(query.split()), 24, break_long_words=False, break_on_hyphens=False
        )
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def zero_shot_bars(table: pd.DataFrame):
    """Zero-shot accuracy per attribute against chance (`attribute`, `accuracy`, `chance`)."""
    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(table))
    ax.bar(x, table["accuracy"], 0.6, label="zero-shot")
    ax.scatter(x, table["chance"], color="black", marker="_", s=400, label="chance", zorder=3)
    ax.set_xticks(x, table["attribute"])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
