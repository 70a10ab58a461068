"""Contrastive training of a dual encoder on cached features: in-batch negatives, AdamW,
cosine schedule, the epoch with the best validation recall kept."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mmlab.core import progress
from mmlab.retrieval.metrics import both_directions
from mmlab.retrieval.model import DualConfig, DualEncoder, info_nce
from mmlab.retrieval.pairs import PairData, PairSplit, Side
from mmlab.train.optim import adamw


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 640  # pairs: whole images with their captions (128 images x 5 captions)
    lr: float = 1e-3
    weight_decay: float = 0.05
    dim: int = 256  # shared space
    width: int = 256  # heads' hidden width
    layers: int = 1  # transformer layers of attention heads
    dropout: float = 0.1
    patience: int = 4  # epochs without a better validation score before stopping
    time_budget: float | None = None  # seconds: stop after the epoch that crosses it
    device: str = "cpu"
    seed: int = 0


@dataclass
class FitResult:
    model: DualEncoder
    history: pd.DataFrame
    best_epoch: int
    seconds: float


def build(data: PairData, config: TrainConfig) -> DualEncoder:
    train = data.splits["train"]
    shapes = {s.modality: list(s.x.shape[1:]) for s in (train.left, train.right)}
    dual = DualConfig(
        data.pair, data.modalities, dict(data.encoders), shapes, dim=config.dim,
        head_options={"width": config.width, "layers": config.layers, "dropout": config.dropout},
    )  # fmt: skip
    torch.manual_seed(config.seed)
    return DualEncoder(dual)


def similarity(model: DualEncoder, split: PairSplit) -> torch.Tensor:
    """[right items, left items] cosine similarities (e.g. captions x images)."""
    left = model.embed(split.left.modality, split.left.x)
    right = model.embed(split.right.modality, split.right.x)
    return right @ left.T


def evaluate(model: DualEncoder, split: PairSplit) -> dict[str, float]:
    sim = similarity(model, split).numpy()
    names = (split.right.modality, split.left.modality)
    return both_directions(sim, split.right.rows.numpy(), split.left.rows.numpy(), names)


def grouped_order(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pair indices in a random order of their rows, the pairs of one row side by side: a batch
    holds whole images with all their captions, so each image is encoded once for five
    captions (its other captions masked as negatives) and an epoch costs one pass over images."""
    n_rows = int(rows.max()) + 1
    rank = torch.empty(n_rows, dtype=torch.long)
    rank[torch.randperm(n_rows, generator=generator)] = torch.arange(n_rows)
    within = torch.randperm(len(rows), generator=generator)  # captions' order inside a row
    return within[rank[rows[within]].argsort(stable=True)]


def _monitor(scores: dict[str, float]) -> float:
    """Mean of Recall@1/5/10 in both directions."""
    return float(np.mean([v for k, v in scores.items() if "recall_at" in k]))


def fit(
    data: PairData,
    config: TrainConfig,
    hard_negatives: Side | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train the heads of `data.pair` on its train split; validation picks the kept epoch.

    `hard_negatives`: texts (with the training row each was drawn for) that are wrong for their
    row, added as negatives of the left -> right direction when their row is in the batch.
    """
    started = time.perf_counter()
    dev = config.device
    model = build(data, config).to(dev)
    train, val = data.splits["train"], data.splits["validation"]
    left_idx, right_idx = train.positives()
    rows = train.left.rows[left_idx]
    steps = config.epochs * max(1, -(-len(rows) // config.batch_size))
    opt = adamw(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, device=dev)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=steps, pct_start=0.1, anneal_strategy="cos"
    )
    g = torch.Generator().manual_seed(config.seed)
    history, best, best_state, best_epoch, waited = [], -1.0, None, 0, 0
    bar = progress.EpochBar(config.epochs, f"{data.pair} seed {config.seed}")
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses = []
        for batch in grouped_order(rows, g).split(config.batch_size):
            li, ri, r = left_idx[batch], right_idx[batch], rows[batch]
            # each distinct item is encoded once, then gathered (captions share their image)
            ul, inv_l = li.unique(return_inverse=True)
            ur, inv_r = ri.unique(return_inverse=True)
            a = model.encode(train.left.modality, train.left.x[ul].to(dev))[inv_l]
            b = model.encode(train.right.modality, train.right.x[ur].to(dev))[inv_r]
            extra = None
            if hard_negatives is not None:
                chosen = torch.isin(hard_negatives.rows, r).nonzero().squeeze(1)
                if len(chosen):
                    extra = model.encode(hard_negatives.modality, hard_negatives.x[chosen].to(dev))
            loss = info_nce(a, b, r.to(dev), model.scale(), extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        scores = evaluate(model, val)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "temperature": float(1 / model.scale().detach()),
               "val_mean_recall": _monitor(scores),
               **{f"val_{k}": v for k, v in scores.items() if "recall_at" in k}}  # fmt: skip
        history.append(row)
        bar.update({"loss": row["loss"], "val_mean_recall": row["val_mean_recall"]})
        if on_epoch is not None:
            on_epoch(epoch, row)
        if row["val_mean_recall"] > best:
            best, best_epoch, waited = row["val_mean_recall"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
        out_of_time = config.time_budget and time.perf_counter() - started > config.time_budget
        if waited >= config.patience or out_of_time:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval().cpu()
    return FitResult(model, pd.DataFrame(history), best_epoch, time.perf_counter() - started)
