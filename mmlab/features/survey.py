"""Notebook 01's loop in one place: encode splits through the cache, time, probe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from mmlab.features import cache, create, probe
from mmlab.features.base import Extractor


@dataclass
class Encoded:
    """One encoder's features per split, its output shape and its measured speed."""

    modality: str
    name: str
    extractor: Extractor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    items_per_s: float = float("nan")

    @property
    def label(self) -> str:
        return f"{self.modality}:{self.name}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.features.values())).shape[1:])


def throughput(extractor: Extractor, items: Sequence, batch_size: int | None = None) -> float:
    """Items per second of an uncached extraction of `items`, after a one-item warm-up."""
    extractor.extract([items[0]], batch_size=1)
    return probe.timed(lambda: extractor.extract(items, batch_size=batch_size)).items_per_s


def encode(
    ds,
    modality: str,
    name: str,
    *,
    splits: Sequence[str] = ("train", "test"),
    batch_size: int | None = None,
    throughput_items: int = 64,
    progress: bool = True,
    **options,
) -> Encoded:
    """Features of `splits` (cached), plus throughput timed on the first test items, uncached."""
    extractor = create(modality, name, **options)
    result = Encoded(modality, name, extractor)
    for split in splits:
        result.features[split] = cache.features(
            ds, split, extractor, batch_size=batch_size, progress=progress and f"{name} {split}"
        )
    column = cache.column_items(ds[splits[-1]], cache.DEFAULT_COLUMNS[modality], modality)
    sample = [column[i] for i in range(min(throughput_items, len(column)))]
    result.items_per_s = throughput(extractor, sample, batch_size)
    return result


def encode_all(
    ds,
    encoders: Mapping[str, Sequence[str]],
    *,
    options: Mapping[str, Mapping] | None = None,
    image_size: int | None = None,
    device: str = "auto",
    **kwargs,
) -> list[Encoded]:
    """`encode` every `{modality: [names]}` with per-modality `options` (e.g.
    `{"video": {"num_frames": 4}}`); `image_size` is a shortcut for image encoders."""
    options = {m: dict(o) for m, o in (options or {}).items()}
    if image_size is not None:
        options.setdefault("image", {})["image_size"] = image_size
    results = []
    for modality, names in encoders.items():
        for name in names:
            opts = {"device": device, **options.get(modality, {})}
            results.append(encode(ds, modality, name, **opts, **kwargs))
    return results


def summary_table(results: Sequence[Encoded]) -> pd.DataFrame:
    """One row per encoder: kind, output shape, dimension, items/s."""
    return pd.DataFrame(
        [
            {
                "modality": r.modality,
                "encoder": r.name,
                "kind": r.extractor.kind,
                "shape": "x".join(map(str, r.shape)),
                "dim": r.extractor.dim,
                "items_per_s": round(r.items_per_s, 1),
            }
            for r in results
        ]
    )


def probe_table(
    results: Sequence[Encoded],
    ds,
    targets: Sequence[str] = ("first_shape", "first_colour"),
    train: str = "train",
    test: str = "test",
    grid_cells: int | None = None,
) -> pd.DataFrame:
    """Linear-probe test accuracy per encoder and target with the majority-class floor; grids are
    pooled to `grid_cells` x `grid_cells` first (None: one vector)."""
    rows = []
    for target in targets:
        for split in (train, test):
            if target not in ds[split].column_names:
                raise KeyError(f"probe target {target!r} is not a column of split {split!r}")
        y_train, y_test = ds[train][target], ds[test][target]
        chance = max(y_test.count(v) for v in set(y_test)) / len(y_test)
        for r in results:
            acc = probe.linear_probe(
                r.features[train], y_train, r.features[test], y_test, grid_cells=grid_cells
            )
            rows.append(
                {
                    "modality": r.modality,
                    "encoder": r.name,
                    "target": target,
                    "accuracy": acc,
                    "majority": chance,
                }
            )
    return pd.DataFrame(rows)


def cost_table(
    results: Sequence[Encoded], probes: pd.DataFrame, modality: str, target: str, baseline: str
) -> pd.DataFrame:
    """Per `modality` encoder: ms per item, its multiple of `baseline`'s, and probe accuracy on
    `target` with its majority rate (NaN where missing)."""
    encoded = [r for r in results if r.modality == modality]
    ms = {r.name: 1000 / r.items_per_s for r in encoded}
    base = ms.get(baseline, float("nan"))
    probed = (
        probes[(probes["modality"] == modality) & (probes["target"] == target)].set_index("encoder")
        if not probes.empty
        else pd.DataFrame(columns=["accuracy", "majority"])
    )
    return pd.DataFrame(
        [
            {
                "encoder": name,
                "ms_per_item": cost,
                f"cost_vs_{baseline}": cost / base,
                f"accuracy_{target}": probed["accuracy"].get(name, float("nan")),
                "majority": probed["majority"].get(name, float("nan")),
            }
            for name, cost in ms.items()
        ],
        columns=["encoder", "ms_per_item", f"cost_vs_{baseline}", f"accuracy_{target}", "majority"],
    )


def metrics(summary: pd.DataFrame, probes: pd.DataFrame) -> dict[str, float]:
    """Flat metrics: `items_per_s.<modality>.<encoder>`, `dim.<...>`, `probe.<target>.<...>`."""
    out = {}
    for row in summary.itertuples():
        out[f"items_per_s.{row.modality}.{row.encoder}"] = float(row.items_per_s)
        out[f"dim.{row.modality}.{row.encoder}"] = float(row.dim)
    for row in probes.itertuples():
        out[f"probe.{row.target}.{row.modality}.{row.encoder}"] = float(row.accuracy)
    return out


# Columns that are no attribute of an image: the row's id, its files and text, the match task's
# pairs, COCO instance categories (a list).
NOT_ATTRIBUTES = frozenset(
    {
        "id",
        "image",
        "audio",
        "video",
        "captions",
        "split",
        "objects",
        "categories",
        "match_caption",
        "match_label",
        "match_kind",
    }
)
MAX_CLASSES = 50  # more distinct values than this is an identifier or free text, not a class
MIN_PROJECTED = 3  # a 2-D projection needs at least this many points


def attribute_columns(ds, train: str = "train") -> list[str]:
    """`label`, then every scalar column with 2 to `MAX_CLASSES` values in train, fewer than rows."""
    import datasets

    split = ds[train]
    found = []
    for column, feature in split.features.items():
        scalar = isinstance(feature, datasets.ClassLabel) or (
            isinstance(feature, datasets.Value) and not feature.dtype.startswith("float")
        )
        if column in NOT_ATTRIBUTES or not scalar:
            continue
        values = len(set(split[column]))
        if 2 <= values <= MAX_CLASSES and values < len(split):  # one value per row: an id
            found.append(column)
    return sorted(found, key=lambda c: c != "label")


def probe_targets(ds, requested: Sequence[str], train: str = "train", test: str = "test"):
    """`(targets, note)`: the requested targets present in both splits, else `attribute_columns`;
    `note` says in one line what changed."""
    columns = set(ds[train].column_names) & set(ds[test].column_names)
    present = [t for t in requested if t in columns]
    missing = [t for t in requested if t not in columns]
    if present:
        note = (
            f"probe targets {missing} are not columns of this dataset: left out" if missing else ""
        )
        return present, note
    found = [c for c in attribute_columns(ds, train) if c in columns]
    if found:
        return (
            found,
            f"probe targets {list(requested)} not in this dataset; probing {found} instead",
        )
    return [], (
        f"no probe targets: the dataset has none of {list(requested)} and no label or attribute "
        "column (give one, e.g. a 'label' column in metadata.jsonl); probes skipped"
    )


def projection_split(ds, preferred: str = "test", fallback: str = "train") -> str:
    """The split to project: `preferred` unless it has too few points, then `fallback`."""
    return preferred if len(ds[preferred]) >= MIN_PROJECTED else fallback


def colour_labels(split, column: str | None) -> list:
    """Values colouring a projection: the column's, or one class for all when it is missing."""
    if column and column in split.column_names:
        return list(split[column])
    return ["all"] * len(split)


def modalities_present(ds, chosen: Mapping[str, Sequence[str]], split: str = "train"):
    """`(chosen, note)`: the `{modality: encoders}` whose column the dataset has, and one line
    naming those left out ("" when none is); photos have no audio or video column."""
    columns = ds[split].column_names
    kept = {m: names for m, names in chosen.items() if cache.DEFAULT_COLUMNS[m] in columns}
    left = [m for m in chosen if m not in kept]
    note = (
        f"the dataset has no {', '.join(left)} column: those encoders are left out" if left else ""
    )
    return kept, note
