"""The two sides of a retrieval pair, read from a dataset through the feature cache.
A side is one modality's features per item of a split with the row it belongs to: one item
per row, or per caption for text. Items of the two sides match when their rows are equal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mmlab.features.registry import parse_encoder

SPLITS = ("train", "validation", "test")
CAPTION_COLUMN = "caption"  # column of the flattened caption table

# pair name -> (left modality, right modality); queries may go either way
PAIRS: dict[str, tuple[str, str]] = {
    p: tuple(p.split("-")) for p in ("image-text", "audio-text", "video-text", "image-audio")
}
# What the trained heads read: the image as a grid for attention pooling, the sound as a log-mel
# sequence (pulses and onsets live in time), the clip as its mean frame vector at full 64 px,
# a caption as MiniLM's vector. Images go to 192 px for a 12x12 stride-16 grid: on 8x8 a small
# object covers less than a cell (benchmarks/RESULTS.md, Retrieval).
HEAD_ENCODERS: dict[str, str] = {
    "image": "efficientnet_lite0:image_size=192,kind=grid,layer=mid",
    "text": "minilm",
    "audio": "logmel:kind=sequence",
    "video": "frame_mean:num_frames=8,image_size=64",
}
# What the frozen-feature baseline reads: one pooled vector per item.
POOLED_ENCODERS: dict[str, str] = {
    "image": "efficientnet_lite0:image_size=128",
    "text": "minilm",
    "audio": "logmel",
    "video": "frame_mean:num_frames=8,image_size=64",
}
COLUMNS = {"image": "image", "audio": "audio", "video": "video", "text": "captions"}


def pair_modalities(pair: str) -> tuple[str, str]:
    if pair not in PAIRS:
        raise KeyError(f"unknown retrieval pair {pair!r}; valid pairs: {', '.join(PAIRS)}")
    return PAIRS[pair]


@dataclass
class Side:
    """Features `x` of one modality's items and the dataset row of each item."""

    modality: str
    x: torch.Tensor
    rows: torch.Tensor  # [n_items] long
    texts: list[str] | None = None  # the captions, for a text side

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class PairSplit:
    left: Side
    right: Side
    ids: list[str]  # dataset row ids

    def positives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(left item, right item) of every matching pair: each item of the side with several
        items per row paired with the other side's item of its row."""
        if _one_per_row(self.left):
            return self.right.rows.clone(), torch.arange(len(self.right))
        if _one_per_row(self.right):
            return torch.arange(len(self.left)), self.left.rows.clone()
        raise ValueError("a retrieval pair needs one side with one item per dataset row")


def _one_per_row(side: Side) -> bool:
    return torch.equal(side.rows, torch.arange(len(side.rows)))


@dataclass
class PairData:
    pair: str
    modalities: tuple[str, str]
    encoders: dict[str, str]
    splits: dict[str, PairSplit] = field(default_factory=dict)


def caption_table(ds_split) -> tuple[list[str], list[str], torch.Tensor]:
    """Every caption of a split flattened: (item ids `row_id#j`, captions, row of each)."""
    if "captions" not in ds_split.column_names:
        raise KeyError(f"the text side needs a 'captions' column; columns: {ds_split.column_names}")
    ids, texts, rows = [], [], []
    for row, (key, captions) in enumerate(zip(ds_split["id"], ds_split["captions"], strict=True)):
        captions = [captions] if isinstance(captions, str) else list(captions)
        for j, text in enumerate(captions):
            ids.append(f"{key}#{j}")
            texts.append(text)
            rows.append(row)
    return ids, texts, torch.tensor(rows, dtype=torch.long)


def make_extractor(modality: str, spec: str | Mapping[str, Any], device: str = "auto"):
    from mmlab import features

    name, options = parse_encoder(spec, what=f"{modality} encoder")
    return features.create(modality, name, device=device, **options)


def side(ds, split: str, modality: str, extractor) -> Side:
    """One split's features of `modality` (cached): captions flattened for text."""
    import datasets

    from mmlab.features import cache

    if modality != "text":
        column = COLUMNS[modality]
        if column not in ds[split].column_names:
            raise KeyError(
                f"modality {modality!r} needs column {column!r}, not in split {split!r}; "
                f"columns: {ds[split].column_names}"
            )
        x = cache.features(ds, split, extractor, column=column)
        return Side(modality, x, torch.arange(len(x)))
    tables = {}
    for s in ds:  # every split, so a fitted text encoder learns its vocabulary from train
        ids, texts, _ = caption_table(ds[s])
        tables[s] = datasets.Dataset.from_dict({"id": ids, CAPTION_COLUMN: texts})
    flat = datasets.DatasetDict(tables)
    x = cache.features(flat, split, extractor, column=CAPTION_COLUMN)
    _, texts, rows = caption_table(ds[split])
    return Side("text", x, rows, texts)


def pair_data(
    ds,
    pair: str = "image-text",
    encoders: Mapping[str, Any] | None = None,
    device: str = "auto",
    splits=SPLITS,
) -> PairData:
    """Both sides of `pair` for every split; `encoders` overrides `HEAD_ENCODERS` per modality."""
    modalities = pair_modalities(pair)
    missing = [s for s in splits if s not in ds]
    if missing:
        raise KeyError(f"the dataset lacks splits {missing}; it has {list(ds)}")
    chosen = {m: (encoders or {}).get(m, HEAD_ENCODERS[m]) for m in modalities}
    data = PairData(pair, modalities, {m: str(v) for m, v in chosen.items()})
    extractors = {m: make_extractor(m, chosen[m], device) for m in modalities}
    for s in splits:
        left, right = (side(ds, s, m, extractors[m]) for m in modalities)
        data.splits[s] = PairSplit(left, right, list(ds[s]["id"]))
    return data


def hard_negative_side(ds, per_image: int, extractor, split: str = "train") -> Side:
    """Captions of scenes changed in one attribute (the `match` task's negatives), `per_image`
    drawn per row of `split`, encoded like the captions: wrong for their row by construction."""
    import datasets

    from mmlab.data import world_of
    from mmlab.features import cache

    rows_ds = ds[split]
    world = world_of(rows_ds)
    if not world.knows_scenes:
        raise ValueError(
            "hard negatives are drawn from scene objects (the embedded synthetic data); split "
            f"{split!r} has columns {rows_ds.column_names}"
        )
    ids, texts, rows = [], [], []
    drawn = world.hard_negatives(rows_ds, per_image, seed=1)
    for i, (ident, negatives) in enumerate(zip(rows_ds["id"], drawn, strict=True)):
        ids += [f"{ident}~neg{j}" for j in range(len(negatives))]
        texts += negatives
        rows += [i] * len(negatives)
    table = datasets.Dataset.from_dict({"id": ids, CAPTION_COLUMN: texts})
    x = cache.features(datasets.DatasetDict(train=table), "train", extractor, column=CAPTION_COLUMN)
    return Side("text", x, torch.tensor(rows, dtype=torch.long), texts)
