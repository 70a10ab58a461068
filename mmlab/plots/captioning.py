"""Figures of notebook 03 (caption training): learning curves and decoding comparisons.
Each returns a pyplot-free `Figure`; examples and attention maps live in `plots.evaluation`."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def training_curves(history: pd.DataFrame, best_epoch: int | None = None) -> Figure:
    """Train/validation loss and validation BLEU-4/CIDEr per epoch (`FitResult.history`),
    with the kept (best) epoch marked."""
    missing = {"epoch", "train_loss", "val_loss", "val_bleu4", "val_cider"} - set(history)
    if missing:
        raise KeyError(f"history lacks columns {sorted(missing)}; pass FitResult.history")
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    loss_ax, bleu_ax = fig.subplots(1, 2)
    epochs = history["epoch"]
    loss_ax.plot(epochs, history["train_loss"], "o-", label="train (teacher forcing)")
    loss_ax.plot(epochs, history["val_loss"], "o-", label="validation (teacher forcing)")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy per word", title="loss")
    loss_ax.legend()
    bleu_ax.plot(epochs, history["val_bleu4"], "o-", color="tab:green", label="BLEU-4")
    bleu_ax.set(xlabel="epoch", ylabel="BLEU-4", title="validation, decoded captions")
    cider_ax = bleu_ax.twinx()
    cider_ax.plot(epochs, history["val_cider"], "s--", color="tab:purple", label="CIDEr")
    cider_ax.set_ylabel("CIDEr")
    if best_epoch:  # epochs count from 1
        for ax in (loss_ax, bleu_ax):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="kept")
    handles = bleu_ax.get_legend_handles_labels()[0] + cider_ax.get_legend_handles_labels()[0]
    bleu_ax.legend(handles=handles, loc="lower right")
    return fig


COMPARED = ("bleu4", "cider", "object_precision", "object_recall")


def decoding_comparison(table: pd.DataFrame, metrics=COMPARED) -> Figure:
    """One bar group per metric, one bar per beam size (`table`: `compare_decodings`' table,
    index = beam size, a column per metric; metrics it lacks are skipped)."""
    shown = table[[m for m in metrics if m in table.columns]].rename(
        index=lambda b: "greedy" if b == 1 else f"beam {b}"
    )
    fig = Figure(figsize=(1.6 + 1.3 * len(shown.columns), 3.2), layout="constrained")
    ax = fig.subplots()
    shown.T.plot.bar(ax=ax, rot=0)
    ax.set(ylabel="score", title="test split: greedy against beam search")
    ax.legend(title="")
    return fig
