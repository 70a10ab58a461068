"""Figures of notebook 04 (caption evaluation): examples, attention, beam sizes, lengths, words.
Each returns a `Figure` built without pyplot (no global state, no figures left open)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

BEAM_METRICS = ("bleu4", "meteor", "rouge_l", "cider", "object_precision", "object_recall")
BEAM_METRICS += ("chair_s", "relation_error")


def _wrap(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def set_label(name) -> str:
    """Row names of `mmlab.metrics.EvaluationReport.table` as legend labels."""
    if name == "human":
        return "references"
    return f"beam {name}" if isinstance(name, (int, np.integer)) else str(name)


def caption_examples(
    images: Sequence[Image.Image],
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    scores: Sequence[float] | None = None,
    title: str = "",
    score_name: str = "CIDEr",
    n_references: int = 2,
) -> Figure:
    """One column per image: the image, the generated caption (with its score) in bold, and the
    first `n_references` reference captions below it."""
    n = len(images)
    if not n or not (n == len(predictions) == len(references)):
        raise ValueError(f"need as many predictions and references as images (got {n} images)")
    fig = Figure(figsize=(3.2 * n, 5.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    for i, ax in enumerate(axes):
        ax.imshow(images[i])
        ax.set_xticks([]), ax.set_yticks([])
        score = f" ({score_name} {scores[i]:.2f})" if scores is not None else ""
        ax.set_title(_wrap(predictions[i] + score), fontsize=9, fontweight="bold")
        refs = "\n".join(_wrap("• " + r) for r in list(references[i])[:n_references])
        ax.set_xlabel(refs, fontsize=8, color="dimgray")
    if title:
        fig.suptitle(title)
    return fig


def ranked_examples(
    images: Mapping[str, Image.Image],
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    scores: pd.Series,
    n: int = 4,
    worst: bool = False,
    score_name: str = "CIDEr",
) -> Figure:
    """`caption_examples` for the `n` best (or worst) images by `scores` (a Series by id)."""
    chosen = scores.sort_values(ascending=worst).index[:n]
    title = f"{'worst' if worst else 'best'} {len(chosen)} by {score_name}"
    return caption_examples(
        [images[k] for k in chosen],
        [predictions[k] for k in chosen],
        [references[k] for k in chosen],
        scores[chosen].tolist(),
        title,
        score_name,
    )


def upsample_attention(attention: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """`[n_words, H, W]` attention weights -> `[n_words, height, width]` over the image."""
    alpha = torch.as_tensor(attention, dtype=torch.float32).unsqueeze(1)
    return F.interpolate(alpha, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def attention_maps(
    images: Sequence[Image.Image],
    words: Sequence[Sequence[str]],
    attention: Sequence[torch.Tensor],
    max_words: int = 12,
) -> Figure:
    """One row per image: the image, then each generated word with its attention laid over it
    (bright = attended). Each map is scaled to its own maximum so its shape is visible."""
    if not (len(images) == len(words) == len(attention)) or not len(images):
        raise ValueError("need one word list and one attention tensor per image")
    cols = 1 + min(max_words, max(len(w) for w in words))
    fig = Figure(figsize=(1.6 * cols, 1.8 * len(images)), layout="constrained")
    axes = np.asarray(fig.subplots(len(images), cols, squeeze=False))
    for row, (image, sentence, alpha) in enumerate(zip(images, words, attention, strict=True)):
        maps = upsample_attention(alpha[: cols - 1], (image.height, image.width))
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("image", fontsize=8)
        for col, ax in enumerate(axes[row, 1:]):
            if col < len(maps):
                ax.imshow(image)
                ax.imshow(maps[col] / max(maps[col].max(), 1e-8), cmap="inferno", alpha=0.6)
                ax.set_title(sentence[col], fontsize=9)
        for ax in axes[row]:
            ax.axis("off")
    return fig


def metrics_by_beam(
    table: pd.DataFrame, human: Mapping[str, float] | None = None, metrics: Sequence[str] = ()
) -> Figure:
    """Each metric against beam size (index: beam, a column per metric), human agreement dashed
    where given; default metrics: the `BEAM_METRICS` the table has."""
    metrics = [m for m in (metrics or BEAM_METRICS) if m in table.columns]
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(3.0 * cols, 2.4 * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, metrics, strict=False):
        ax.plot(table.index, table[name], marker="o", label="model")
        if human is not None and name in human:
            ax.axhline(human[name], color="gray", linestyle="--", label="human")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("beam size")
        ax.set_xticks(list(table.index))
    for ax in axes[len(metrics) :]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    return fig


def caption_lengths(lengths: Mapping[str, Sequence[int]]) -> Figure:
    """Histograms of caption length (words), one per source (`{"beam 3": [...], "references":
    [...]}`), on shared integer bins."""
    top = max(max(v, default=0) for v in lengths.values())
    bins = np.arange(0.5, top + 1.5)
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    for name, values in lengths.items():
        mean = float(np.mean(values)) if len(values) else float("nan")
        ax.hist(values, bins=bins, density=True, alpha=0.45, label=f"{name} (mean {mean:.1f})")
    ax.set_xlabel("words per caption")
    ax.set_ylabel("share of captions")
    ax.legend(fontsize=8)
    return fig


def vocabulary_use(table: pd.DataFrame, max_n: int = 4) -> Figure:
    """Distinct n-grams (n = 1..max_n) per source (`table`: a row per source, columns
    `distinct_n` as from `mmlab.metrics.vocabulary_use`), as grouped bars on a log scale."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(table)
    x = np.arange(1, max_n + 1)
    for i, (name, row) in enumerate(table.iterrows()):
        ax.bar(x + i * width, [row[f"distinct_{n}"] for n in x], width, label=set_label(name))
    ax.set_xticks(x + width * (len(table) - 1) / 2, [f"{n}-grams" for n in x])
    ax.set_yscale("log")
    ax.set_ylabel("distinct n-grams")
    ax.legend(fontsize=8)
    return fig
