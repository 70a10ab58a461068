"""Figures of notebook 02 from `Comparison` tables: accuracy and its interval, cost, modality
weights, accuracy by group, target or missing modality, validation curves, robustness curves
(matplotlib Figures)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def accuracy_bars(summary: pd.DataFrame, chance: float | None = None, metric: str = "accuracy"):
    """Mean test accuracy per method with its confidence interval as the error bar."""
    s = summary.iloc[::-1]  # best at the top
    err = np.vstack([s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(s) + 1.2))
    ax.barh(s["method"], s["mean"], xerr=err, capsize=3, color="tab:blue", alpha=0.8)
    if chance is not None:
        ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="lower right", fontsize=8)
    level = int(round(100 * float(summary.attrs.get("confidence", 0.95))))
    ax.set_xlabel(f"test {metric} (mean over seeds, {level}% t-interval)")
    ax.set_xlim(min(0.4, float(s["ci_low"].min()) - 0.02), 1.0)
    fig.tight_layout()
    return fig


def cost_scatter(summary: pd.DataFrame):
    """Accuracy against parameter count and against inference latency, one point per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, column, label in (
        (axes[0], "n_parameters", "trainable parameters"),
        (axes[1], "latency_ms", "inference latency, one sample (ms)"),
    ):
        err = np.vstack([summary["mean"] - summary["ci_low"], summary["ci_high"] - summary["mean"]])
        ax.errorbar(summary[column], summary["mean"], yerr=err, fmt="o", capsize=3)
        for _, row in summary.iterrows():
            xy = (row[column], row["mean"])
            ax.annotate(row["method"], xy, fontsize=7, xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("test accuracy")
    fig.tight_layout()
    return fig


def modality_weights(weights: pd.DataFrame):
    """Learned modality weights (mean over the test set, then over seeds; bars show the seed
    standard deviation) of the methods that learn them."""
    if weights.empty:
        raise ValueError("no modality weights to plot: run weighted_sum, attention or gated")
    table = weights.groupby(["method", "modality"])["weight"].agg(["mean", "std"]).unstack()
    methods, modalities = list(table.index), list(table["mean"].columns)
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2.5, 3.5))
    width = 0.8 / len(modalities)
    x = np.arange(len(methods))
    for i, m in enumerate(modalities):
        err = table["std"][m].fillna(0)
        ax.bar(x + i * width, table["mean"][m], width, yerr=err, capsize=3, label=m)
    ax.set_xticks(x + width * (len(modalities) - 1) / 2, methods)
    ax.set_ylabel("modality weight")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def group_heatmap(by_group: pd.DataFrame, title: str = "test accuracy by hard-negative kind"):
    """Methods (rows) x groups (columns) coloured by accuracy, values written in the cells; also
    methods x targets, and (target, method) x removed modality (`compare.missing_by_target`)."""
    fig, ax = plt.subplots(figsize=(1.1 * by_group.shape[1] + 3, 0.4 * len(by_group) + 1.5))
    image = ax.imshow(by_group.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(by_group.shape[1]), by_group.columns)
    rows = [" · ".join(map(str, r)) if isinstance(r, tuple) else r for r in by_group.index]
    ax.set_yticks(range(len(by_group)), rows)
    for (i, j), value in np.ndenumerate(by_group.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def validation_curves(histories: dict[tuple[str, int], dict[str, list[float]]]):
    """Validation accuracy per epoch: one colour per method, one line per seed."""
    methods = list(dict.fromkeys(method for method, _ in histories))
    colours = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (method, _seed), history in histories.items():
        i = methods.index(method)
        curve = history["val_accuracy"]
        label = method if _seed == min(s for m, s in histories if m == method) else None
        ax.plot(range(1, len(curve) + 1), curve, color=colours(i % 20), alpha=0.7, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def robustness_curves(curves: pd.DataFrame, chance: float | None = None):
    """Performance-imperfection curves (MultiBench): mean test accuracy over seeds against the
    level, one panel per imperfection and modality, one line per fusion method (unimodal
    baselines are in the table: their curves are flat wherever their modality is untouched)."""
    curves = curves[~curves["method"].str.startswith("unimodal")]
    panels = list(curves.groupby(["kind", "modality"], sort=False))
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    for ax, ((kind, modality), panel) in zip(axes.flat, panels, strict=False):
        mean = panel.groupby(["method", "level"], sort=False)["accuracy"].mean()
        for method, curve in mean.groupby(level="method", sort=False):
            ax.plot(curve.index.get_level_values("level"), curve.to_numpy(), label=method)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{kind} on {modality}", fontsize=9)
        ax.set_xlabel("level", fontsize=8)
        ax.set_ylim(0, 1.02)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel("test accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * (len(labels) > 6), 1, 1))
    return fig
