"""Build a fusion task's inputs from a dataset through the feature cache.
Pooled methods get one vector per modality (`encoders`); token methods get token-level inputs
(`token_encoders`): an image grid, `Vocabulary` ids for a trainable GRU (`"vocab"`), or
sequence features. An encoder is a name, `"name:key=value,..."` or `{"name": ..., **options}`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.nn import functional as F

from mmlab.features.registry import parse_encoder
from mmlab.fusion.methods import InputSpec
from mmlab.fusion.train import Split

VOCAB = "vocab"  # token encoder of the text: Vocabulary ids for a trainable GRU
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Task:
    """Which columns hold the text, the label and (optionally) the group of each sample."""

    name: str
    text_column: str
    label_column: str
    group_column: str | None = None


TASKS = {
    "match": Task("match", "match_caption", "match_label", "match_kind"),
    "label": Task("label", "captions", "label"),
}


def task_spec(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown fusion task {name!r}; valid tasks: {', '.join(TASKS)}") from None


@dataclass
class FusionData:
    """A task's inputs per form (`pooled`, `tokens`) and split, with the specs to build models."""

    task: Task
    modalities: list[str]
    specs: dict[str, dict[str, InputSpec]]  # form -> modality -> spec
    splits: dict[str, dict[str, Split]]  # form -> split -> Split
    class_names: list[str]
    encoders: dict[str, dict[str, str]] = field(default_factory=dict)  # form -> modality -> name
    vocabulary: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def described_class(self) -> int | None:
        """The class whose captions describe their image (the match task's "1"); None when
        every caption does (a label task: the text belongs to its sample)."""
        return self.class_names.index("1") if self.task.name == "match" else None

    def split(self, form: str, name: str) -> Split:
        if form not in self.splits:
            raise KeyError(
                f"no {form!r} inputs were built (have {list(self.splits)}); "
                f"give {'token_encoders' if form == 'tokens' else 'encoders'} to build()"
            )
        return self.splits[form][name]


def _labels(ds, column: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Integer labels per split (a column, or a registered target of `mmlab.data.targets`);
    classes are the train split's values, sorted."""
    from mmlab.data import targets

    answers = {name: targets.values(ds[name], column, name) for name in ds}
    classes = sorted(set(answers["train"]), key=str)
    index = {c: i for i, c in enumerate(classes)}
    labels = {}
    for name, values in answers.items():
        unseen = set(values) - set(index)
        if unseen:
            raise ValueError(
                f"split {name!r} has labels {sorted(unseen, key=str)[:5]} not in train"
            )
        labels[name] = torch.tensor([index[v] for v in values], dtype=torch.long)
    return labels, [str(c) for c in classes]


def _column(t: Task, modality: str) -> str:
    return t.text_column if modality == "text" else modality


def _vocab_inputs(ds, column: str, extra=None) -> tuple[dict[str, torch.Tensor], InputSpec, Any]:
    from mmlab.data.text import SPECIALS, Vocabulary

    def texts(split):
        return [v[0] if isinstance(v, list) else v for v in ds[split][column]]

    train = texts("train") + (extra.captions if extra is not None else [])
    # Extra pairs are training text too: words only they use must not become <unk>.
    vocabulary = Vocabulary.build(train)
    ids = {name: vocabulary.encode_batch(texts(name)) for name in ds}
    ids["train"] = vocabulary.encode_batch(train)
    width = max(x.shape[1] for x in ids.values())  # one width for every split
    ids = {n: F.pad(x, (0, width - x.shape[1]), value=vocabulary.pad_id) for n, x in ids.items()}
    spec = InputSpec(
        "ids",
        len(vocabulary),
        pad_id=vocabulary.pad_id,
        unk_id=vocabulary.unk_id,
        special_ids=tuple(vocabulary.stoi[token] for token in SPECIALS),
    )
    return ids, spec, vocabulary


def _spec(x: torch.Tensor) -> InputSpec:
    if x.dim() == 2:
        return InputSpec("pooled", x.shape[1])
    if x.dim() == 4:
        return InputSpec("grid", x.shape[1], tuple(x.shape[2:]))
    if x.dim() == 3:
        return InputSpec("sequence", x.shape[2], (x.shape[1],))
    raise ValueError(f"features of shape {tuple(x.shape)} are neither pooled, grid nor sequence")


def _extractor(modality, spec, device):
    from mmlab import features

    name, options = parse_encoder(spec)
    return features.create(modality, name, device=device, **options)


def _cached_inputs(ds, modality, column, extractor) -> tuple[dict[str, torch.Tensor], InputSpec]:
    from mmlab.features import cache

    x = {split: cache.features(ds, split, extractor, column=column) for split in ds}
    if x["train"].dim() == 3:  # sequences: one padded length for every split
        width = max(v.shape[1] for v in x.values())
        x = {s: F.pad(v, (0, 0, 0, width - v.shape[1])) for s, v in x.items()}
    return x, _spec(x["train"])


@dataclass
class ExtraPairs:
    """Further match pairs of training images: the image row each belongs to, and its text."""

    rows: torch.Tensor
    ids: list[str]
    captions: list[str]
    labels: torch.Tensor
    groups: list[str]


def _extra_pairs(train, t: Task, k: int) -> ExtraPairs:
    from mmlab.data import world_of

    # negatives: the generator's exact ones on embedded data, else made from the captions
    world = world_of(train)
    if t.name != "match" or not world.can_pair(train):
        raise ValueError(
            "extra_pairs needs the match task on a dataset with captions; "
            f"task {t.name!r}, columns {train.column_names}"
        )
    drawn = world.match_pairs(train, k)
    ids = train["id"]
    found = [
        (i, f"{ids[i]}~{j}", pair) for i, pairs in enumerate(drawn) for j, pair in enumerate(pairs)
    ]
    return ExtraPairs(
        rows=torch.tensor([i for i, _, _ in found], dtype=torch.long),
        ids=[name for _, name, _ in found],
        captions=[p[0] for _, _, p in found],
        labels=torch.tensor([p[1] for _, _, p in found], dtype=torch.long),
        groups=[p[2] for _, _, p in found],
    )


def _extend(x: torch.Tensor, modality: str, extra: ExtraPairs, column, extractor):
    """Training features followed by the extra pairs': text through the train split's extractor (one
    feature space), other modalities shared with the image row."""
    if modality != "text":
        return torch.cat([x, x[extra.rows]])
    import datasets

    table = datasets.Dataset.from_dict({"id": extra.ids, column: extra.captions})
    more, _ = _cached_inputs(datasets.DatasetDict(train=table), modality, column, extractor)
    more = more["train"]
    if more.dim() == 3:  # sequences: cut (rare: usually only [SEP]) or pad to the splits' length
        more = more[:, : x.shape[1]]
        more = F.pad(more, (0, 0, 0, x.shape[1] - more.shape[1]))
    return torch.cat([x, more])


def _mismatched(
    labels: torch.Tensor, image_rows: torch.Tensor, positive: int, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption rows, image rows) of mismatched negatives: the captions of a `fraction` of positive
    training pairs, each with another chosen pair's image (each image used once)."""
    positives = (labels == positive).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(positives), generator=g)
    chosen = positives[order[: round(fraction * len(positives))]]
    other = chosen.roll(1)
    keep = image_rows[chosen] != image_rows[other]
    return chosen[keep], other[keep]


def select(encoders: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Any]:
    """The encoders of `modalities`, in that order (notebook 02's `modalities` parameter)."""
    lacking = [m for m in modalities if m not in encoders]
    if lacking:
        raise KeyError(
            f"modalities {lacking} have no encoder in `encoders` (it names {list(encoders)}); "
            f"add e.g. {{'audio': 'mfcc', 'video': 'two_stream'}}"
        )
    if not modalities:
        raise ValueError("`modalities` is empty: name at least one of " + ", ".join(encoders))
    return {m: encoders[m] for m in modalities}


def build(
    ds,
    task: str | Task = "match",
    encoders: Mapping[str, Any] | None = None,
    token_encoders: Mapping[str, Any] | None = None,
    device: str = "auto",
    extra_pairs: int = 0,
    mismatched: float = 0.0,
    target: str | None = None,
) -> FusionData:
    """Inputs of `task` for the modalities in `encoders` (pooled) and/or `token_encoders`.
    `target` (label task): the column to predict or a `mmlab.data.targets` name; default `label`
    (more targets: `relabel`). `extra_pairs` (match task, embedded data): more (caption, label)
    pairs per training image. `mismatched` (match task): that fraction of positive captions paired
    with another training image (group `mismatched`); unlike one-word hard negatives they differ
    in every word, so every grounded word helps."""
    t = _with_target(task_spec(task) if isinstance(task, str) else task, target)
    missing = [s for s in SPLITS if s not in ds]
    if missing:
        raise KeyError(f"the dataset lacks splits {missing}; it has {list(ds)}")
    ds = {s: ds[s] for s in SPLITS}
    if t.name == "match" and t.label_column not in ds["train"].column_names:
        from mmlab.data import negatives  # a caption dataset: match pairs from its captions

        ds = negatives.add_match_columns(ds)
    extra = _extra_pairs(ds["train"], t, extra_pairs) if extra_pairs else None
    forms = {f: dict(e) for f, e in (("pooled", encoders), ("tokens", token_encoders)) if e}
    if not forms:
        raise ValueError("build() needs encoders (pooled) and/or token_encoders")
    labels, classes = _labels(ds, t.label_column)
    groups = {s: list(map(str, ds[s][t.group_column])) if t.group_column else None for s in ds}
    if extra is not None:
        labels["train"] = torch.cat([labels["train"], extra.labels])
        groups["train"] = groups["train"] + extra.groups
    data = FusionData(t, list(next(iter(forms.values()))), {}, {}, classes)
    for form, chosen in forms.items():
        inputs: dict[str, dict[str, torch.Tensor]] = {s: {} for s in SPLITS}
        data.specs[form], data.encoders[form] = {}, {}
        for modality, spec in chosen.items():
            column = _column(t, modality)
            for s in SPLITS:
                if column not in ds[s].column_names:
                    raise KeyError(
                        f"modality {modality!r} needs column {column!r}, not in split {s!r}; "
                        f"columns: {ds[s].column_names}"
                    )
            if spec == VOCAB:
                if modality != "text":
                    raise ValueError(f"the {VOCAB!r} encoder is for text, not {modality!r}")
                x, data.specs[form][modality], data.vocabulary = _vocab_inputs(ds, column, extra)
            else:
                extractor = _extractor(modality, spec, device)
                x, data.specs[form][modality] = _cached_inputs(ds, modality, column, extractor)
                if extra is not None:
                    x["train"] = _extend(x["train"], modality, extra, column, extractor)
            data.encoders[form][modality] = spec if isinstance(spec, str) else str(dict(spec))
            for s in SPLITS:
                inputs[s][modality] = x[s]
        data.splits[form] = {s: Split(inputs[s], labels[s], groups[s]) for s in SPLITS}
    if mismatched:
        _add_mismatched(data, extra, mismatched)
    return data


def _with_target(t: Task, target: str | None) -> Task:
    if target is None:
        return t
    if t.name != "label":
        raise ValueError(f"target={target!r} is for the label task, not {t.name!r}")
    return replace(t, label_column=target)


def relabel(data: FusionData, ds, target: str) -> FusionData:
    """The label task's inputs of `data` (shared, not copied) with the labels of `target`."""
    t = _with_target(data.task, target)
    labels, classes = _labels({s: ds[s] for s in SPLITS}, t.label_column)
    splits = {
        form: {s: Split(x.inputs, labels[s]) for s, x in split.items()}
        for form, split in data.splits.items()
    }
    return replace(data, task=t, splits=splits, class_names=classes)


def _add_mismatched(data: FusionData, extra: ExtraPairs | None, fraction: float) -> None:
    if data.task.name != "match" or "1" not in data.class_names:
        raise ValueError(
            f"mismatched negatives need the match task with labels 0/1; task {data.task.name!r}, "
            f"classes {data.class_names}"
        )
    positive, negative = data.class_names.index("1"), data.class_names.index("0")
    train = next(iter(data.splits.values()))["train"]
    n = len(train) - (len(extra.rows) if extra is not None else 0)
    image_rows = torch.arange(n) if extra is None else torch.cat([torch.arange(n), extra.rows])
    captions, images = _mismatched(train.labels, image_rows, positive, fraction)
    for splits in data.splits.values():
        t = splits["train"]
        inputs = {
            m: torch.cat([x, x[captions if m == "text" else images]]) for m, x in t.inputs.items()
        }
        labels = torch.cat([t.labels, torch.full((len(captions),), negative)])
        groups = t.groups + ["mismatched"] * len(captions) if t.groups is not None else None
        splits["train"] = Split(inputs, labels, groups)
