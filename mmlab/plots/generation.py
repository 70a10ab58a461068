"""Figures of notebook 06 (text to image): samples per prompt and family, training curves,
faithfulness by guidance scale and against training CPU minutes. Each returns a `Figure`."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def sample_grid(texts: list[str], images: dict[str, object], per_prompt: int = 1) -> Figure:
    """A row per prompt, `per_prompt` columns per family (`images[family]`: uint8
    `[len(texts) * per_prompt, 3, S, S]`, prompt-major)."""
    families = list(images)
    columns = len(families) * per_prompt
    fig = Figure(figsize=(1.4 * columns + 2.6, 1.4 * len(texts)), layout="constrained")
    axes = fig.subplots(len(texts), columns, squeeze=False)
    for f, family in enumerate(families):
        for i in range(len(texts)):
            for j in range(per_prompt):
                ax = axes[i][f * per_prompt + j]
                ax.imshow(images[family][i * per_prompt + j].permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and j == 0:
                    ax.set_title(family, fontsize=9, loc="left")
                if f == 0 and j == 0:
                    ax.set_ylabel(texts[i], fontsize=7, rotation=0, ha="right", va="center")
    return fig


def training_curves(histories: dict[str, pd.DataFrame]) -> Figure:
    """Per family: the prior's train and validation loss by epoch, and the checker's
    single-object accuracy (`check_single_*` columns) where the epochs were scored."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    loss_ax, check_ax = fig.subplots(1, 2)
    for family, history in histories.items():
        (line,) = loss_ax.plot(history["epoch"], history["train_loss"], "o-", label=family)
        loss_ax.plot(history["epoch"], history["val_loss"], "--", color=line.get_color())
        for column, style in (("check_single_colour", "o-"), ("check_single_shape", "s--")):
            if column in history:
                scored = history.dropna(subset=[column])
                label = f"{family}: {column.removeprefix('check_single_')}"
                check_ax.plot(scored["cpu_minutes"], scored[column], style, label=label)
    loss_ax.set(xlabel="prior epoch", ylabel="loss (solid: train, dashed: validation)")
    loss_ax.set_title("training loss (diffusion: noise MSE; transformer: token CE)", fontsize=9)
    loss_ax.legend()
    check_ax.set(xlabel="training CPU minutes", ylabel="accuracy", ylim=(0, 1.02))
    check_ax.set_title("single-object prompts, read by the checker", fontsize=9)
    if check_ax.lines:
        check_ax.legend(fontsize=7)
    return fig


def guidance_curves(rows: pd.DataFrame, measures=("single_colour", "single_shape")) -> Figure:
    """Accuracy against the guidance scale w, a line per family and sampler."""
    shown = [m for m in (*measures, "overall_mean_of_categories") if m in rows]
    fig = Figure(figsize=(3.4 * max(len(shown), 1), 3.2), layout="constrained")
    axes = fig.subplots(1, max(len(shown), 1), squeeze=False)[0]
    for ax, measure in zip(axes, shown, strict=False):
        for (family, sampler, steps), group in rows.groupby(["family", "sampler", "steps"]):
            group = group.sort_values("guidance")
            ax.plot(group["guidance"], group[measure], "o-", label=f"{family} {sampler}{steps}")
        ax.set(xlabel="guidance scale w", title=measure.replace("_", " "), ylim=(0, 1.02))
    if shown:
        axes[0].set_ylabel("accuracy")
        axes[-1].legend(fontsize=7)
    return fig
