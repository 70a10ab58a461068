"""Contrastive training of a dual encoder on cached features: in-batch negatives, AdamW,
cosine schedule, the epoch with the best validation recall kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mmlab.retrieval.metrics import both_directions
from mmlab.retrieval.model import DualConfig, DualEncoder, info_nce
from mmlab.retrieval.pairs import PairData, PairSplit, Side
from mmlab.train import loop


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
    warmup: float = 0.1  # share of all steps: the one-cycle schedule's rise to `lr`
    device: str = "cpu"
    amp: bool | str = "auto"  # autocast (mmlab.train.loop.amp_dtype); "auto": on CUDA only
    compile: bool | str = False  # torch.compile the heads
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
        data.pair,
        data.modalities,
        dict(data.encoders),
        shapes,
        dim=config.dim,
        head_options={"width": config.width, "layers": config.layers, "dropout": config.dropout},
    )
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
    """Pair indices in a random order of rows, one row's pairs side by side: each image is encoded
    once per batch for all its captions (the others masked as negatives)."""
    n_rows = int(rows.max()) + 1
    rank = torch.empty(n_rows, dtype=torch.long)
    rank[torch.randperm(n_rows, generator=generator)] = torch.arange(n_rows)
    within = torch.randperm(len(rows), generator=generator)  # captions' order inside a row
    return within[rank[rows[within]].argsort(stable=True)]


def _monitor(scores: dict[str, float]) -> float:
    """Mean of Recall@1/5/10 in both directions."""
    return float(np.mean([v for k, v in scores.items() if "recall_at" in k]))


def train_retrieval(
    data: PairData,
    config: TrainConfig,
    hard_negatives: Side | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train the heads of `data.pair` (`mmlab.train.loop`); validation picks the kept epoch.
    `hard_negatives`: texts wrong for their training row, added as left -> right negatives when
    their row is in the batch."""
    started = time.perf_counter()
    model = build(data, config)
    recipe = loop.LoopConfig.of(
        config,
        monitor="val_mean_recall",
        schedule=loop.ONE_CYCLE,
        name=f"{data.pair} seed {config.seed}",
    )
    result = loop.fit(_study, model, (data, config.batch_size, hard_negatives), recipe, on_epoch)
    model.cpu()
    return FitResult(
        model, pd.DataFrame(result.history), result.best_epoch, time.perf_counter() - started
    )


def _study(model: DualEncoder, data: PairData, batch_size: int, hard_negatives) -> loop.Study:
    train, val = data.splits["train"], data.splits["validation"]
    left_idx, right_idx = train.positives()
    rows = train.left.rows[left_idx]
    # the features a step reads; on a GPU they move there once (a batch is an index, not a copy)
    x = {"left": train.left.x, "right": train.right.x}
    if hard_negatives is not None:
        x["negatives"] = hard_negatives.x

    def prepare(group):
        if group.device.type == "cuda":
            x.update({side: v.to(group.device) for side, v in x.items()})

    def batches(generator, group):
        for batch in grouped_order(rows, generator).split(batch_size):
            yield left_idx[batch], right_idx[batch], rows[batch]

    def forward(net, batch):
        li, ri, r = batch
        dev = group_device(net)
        # each distinct item is encoded once, then gathered (captions share their image)
        ul, inv_l = li.unique(return_inverse=True)
        ur, inv_r = ri.unique(return_inverse=True)
        a = net.encode(train.left.modality, x["left"][ul].to(dev))[inv_l]
        b = net.encode(train.right.modality, x["right"][ur].to(dev))[inv_r]
        extra = None
        if hard_negatives is not None:
            chosen = torch.isin(hard_negatives.rows, r).nonzero().squeeze(1)
            if len(chosen):
                extra = net.encode(hard_negatives.modality, x["negatives"][chosen].to(dev))
        return a, b, extra

    def loss(outputs, batch):
        # in float32: under autocast the similarities of a large batch would be bfloat16
        a, b, extra = (None if t is None else t.float() for t in outputs)
        value = info_nce(a, b, batch[2].to(a.device), model.scale(), extra)
        return value, torch.stack(
            [value.detach().double(), torch.ones((), dtype=torch.float64, device=a.device)]
        )

    def summarise(sums):  # loss: sum over the batches, count
        return {"loss": float(sums[0] / sums[1])}

    def validate(device):
        scores = evaluate(model, val)
        return {
            "temperature": float(1 / model.scale().detach()),
            "val_mean_recall": _monitor(scores),
            **{f"val_{k}": v for k, v in scores.items() if "recall_at" in k},
        }

    return loop.Study(
        model,
        batches,
        forward,
        loss,
        summarise,
        validate,
        steps_per_epoch=max(1, -(-len(rows) // batch_size)),
        prepare=prepare,
    )


def group_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
