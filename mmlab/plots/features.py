"""Figures of notebook 01: samples, 2-D projections, probe accuracy, throughput, cost/accuracy."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def sample_grid(images: Sequence, captions: Sequence[str], ncols: int = 4, width: int = 34):
    """Images with their (wrapped) captions above; a list of captions shows its first."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image)
        caption = caption[0] if isinstance(caption, (list, tuple)) else caption
        ax.set_title(textwrap.fill(caption, width), fontsize=8)
    fig.tight_layout()
    return fig


def projections(points: dict[str, np.ndarray], labels: Sequence, title: str = "", ncols: int = 4):
    """One scatter per `name -> [N, 2]` projection, coloured by `labels` (a scene attribute)."""
    names = list(points)
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows), squeeze=False)
    classes = sorted(set(labels))
    colours = plt.get_cmap("tab10")
    labels = np.asarray(labels)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        xy = points[name]
        for i, cls in enumerate(classes):
            mask = labels == cls
            ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7, color=colours(i % 10), label=cls)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names_ = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names_, fontsize=8, markerscale=2, loc="center right")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    return fig


def probe_accuracies(table: pd.DataFrame):
    """Grouped bars: probe accuracy per encoder and target, majority rate dashed."""
    pivot = table.assign(label=table["modality"] + ":" + table["encoder"]).pivot_table(
        index="label", columns="target", values="accuracy", sort=False
    )
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(pivot)), 3.8))
    pivot.plot.bar(ax=ax, rot=30)
    for target, floor in table.groupby("target")["majority"].first().items():
        ax.axhline(floor, ls="--", lw=1, color="grey")
        ax.annotate(f"majority {target}", (0, floor), fontsize=7, color="grey", va="bottom")
    ax.set_ylim(0, 1)
    ax.set_ylabel("linear-probe accuracy (test)")
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def throughput(table: pd.DataFrame):
    """Horizontal bars of items/s per encoder (log scale: encoders differ by orders)."""
    labels = table["modality"] + ":" + table["encoder"]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(table) + 1))
    ax.barh(labels, table["items_per_s"], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("items / s (batched, this machine)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def cost_vs_accuracy(table: pd.DataFrame, accuracy: str, title: str = ""):
    """Each encoder of a `survey.cost_table` as a point: ms per item (log) against the probe
    accuracy in column `accuracy`, the majority rate dashed."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter(table["ms_per_item"], table[accuracy], s=40, color="tab:blue")
    for row in table.itertuples():
        xy = (row.ms_per_item, getattr(row, accuracy))
        ax.annotate(row.encoder, xy, fontsize=8, xytext=(5, 4), textcoords="offset points")
    ax.axhline(table["majority"].max(), ls="--", lw=1, color="grey")
    corner = (table["ms_per_item"].min(), table["majority"].max())
    ax.annotate("majority class", corner, fontsize=7, color="grey", va="bottom")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("ms per item (batched, this machine)")
    ax.set_ylabel(f"linear-probe {accuracy.replace('_', ' ')}")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
