"""The feature cache: each (dataset, split, column, extractor) computed once, then memory-mapped.
An entry is a folder, written atomically, of an Arrow table (`id`, flattened `features`) and a
`manifest.json` (key parts, shape, SHA-256 of each file); one that no longer matches its
manifest is reported and rebuilt."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from mmlab.core import workspace
from mmlab.features.base import Extractor

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = {"image": "image", "text": "captions", "audio": "audio", "video": "video"}
MANIFEST = "manifest.json"


class DamagedEntry(Exception):
    """A cache entry whose files do not match its manifest."""


def features(
    dataset_dict: datasets.DatasetDict,
    split: str,
    extractor: Extractor,
    column: str | None = None,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | str = False,
) -> torch.Tensor:
    """Features of `dataset_dict[split][column]` from the cache, else computed and stored.
    `column` defaults to the modality's; a list column is encoded by its first entry; fitted
    extractors fit on the train split first."""
    column = column or DEFAULT_COLUMNS[extractor.modality]
    if split not in dataset_dict:
        raise KeyError(f"split {split!r} not in the dataset; it has {list(dataset_dict)}")
    split_ds = dataset_dict[split]
    if column not in split_ds.column_names:
        raise KeyError(
            f"column {column!r} not in split {split!r}; columns: {split_ds.column_names}"
        )
    if getattr(extractor, "needs_fit", False) and not extractor.fitted:
        # One vocabulary for every split: fitted on train (its hash joins the identity).
        fit_on = dataset_dict["train"] if "train" in dataset_dict else split_ds
        extractor.fit(column_items(fit_on, column, extractor.modality))
    key = cache_key(dataset_fingerprint(dataset_dict), split, column, extractor.identity)
    entry = entry_path(key, extractor, split)
    ids = split_ds["id"] if "id" in split_ds.column_names else None
    if entry.exists():
        try:
            return read_entry(entry, ids)
        except DamagedEntry as err:
            log.warning("feature cache entry %s is damaged (%s); rebuilding it", entry, err)
    items = column_items(split_ds, column, extractor.modality)
    values = extractor.extract(
        items, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    parts = _key_parts(key, dataset_dict, split, column, extractor)
    try:
        write_entry(entry, values, ids, parts=parts)
    except OSError:
        # A concurrent kernel (parallel notebooks) renamed the same entry into place first.
        if not (entry / MANIFEST).exists():
            raise
    return values


def cache_key(fingerprint: str, split: str, column: str, identity: dict[str, Any]) -> str:
    blob = json.dumps([fingerprint, split, column, identity], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(key: str, extractor: Extractor, split: str) -> Path:
    return workspace.cache_dir() / "features" / f"{extractor.name}-{split}-{key[:20]}"


def dataset_fingerprint(dataset_dict: datasets.DatasetDict) -> str:
    """`mmlab.data.fingerprint` (content hash); datasets' own split fingerprints without it."""
    try:
        from mmlab.data import fingerprint
    except ImportError:
        fingerprint = None
    fingerprint = getattr(fingerprint, "fingerprint", fingerprint)  # module or function
    if callable(fingerprint):
        return fingerprint(dataset_dict)
    return "|".join(f"{name}:{ds._fingerprint}" for name, ds in sorted(dataset_dict.items()))


class ColumnItems(Sequence):
    """One column of a split, decoded row by row (images stay lazy; workers can share it)."""

    def __init__(self, ds: datasets.Dataset, column: str, first_of_list: bool):
        self.ds, self.column, self.first_of_list = (
            ds.select_columns([column]),
            column,
            first_of_list,
        )

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        value = self.ds[int(i)][self.column]
        if self.first_of_list and isinstance(value, list):
            if not value:
                raise ValueError(f"row {i}: column {self.column!r} is an empty list")
            return value[0]
        return value


def column_items(ds: datasets.Dataset, column: str, modality: str) -> Sequence:
    if modality == "text":  # small: materialise, so text encoders batch over plain strings
        return list(ColumnItems(ds, column, first_of_list=True))
    return ColumnItems(ds, column, first_of_list=False)


# -- entries on disk ---------------------------------------------------------------------------
def write_entry(entry: Path, values: torch.Tensor, ids: list[str] | None, parts: dict) -> None:
    array = values.detach().cpu().float().numpy()
    n = array.shape[0]
    flat = array.reshape(n, -1)
    width = flat.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), width)
    table = pa.table(
        {"id": pa.array(ids if ids is not None else [str(i) for i in range(n)]), "features": column}
    )
    with workspace.atomic_path(entry) as tmp:
        tmp.mkdir()
        with _quiet_datasets():
            datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(tmp / "data"))
        manifest = {
            **parts,
            "shape": list(array.shape),
            "dtype": "float32",
            "files": _checksums(tmp / "data"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))


def read_entry(entry: Path, ids: list[str] | None = None) -> torch.Tensor:
    """The stored tensor, after checking files, shape and row ids against the manifest."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        shape = manifest["shape"]
        if _checksums(entry / "data") != manifest["files"]:
            raise DamagedEntry("data files do not match the manifest's checksums")
        table = datasets.load_from_disk(str(entry / "data")).data
    except DamagedEntry:
        raise
    except Exception as err:  # unreadable manifest or Arrow files: the entry is damaged
        raise DamagedEntry(f"{type(err).__name__}: {err}") from err
    width = math.prod(shape[1:])
    chunks = table.column("features").chunks
    flat = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, width) for c in chunks]
    array = np.concatenate(flat) if flat else np.zeros((0, width), np.float32)
    if array.shape[0] != shape[0]:
        raise DamagedEntry(f"{array.shape[0]} rows stored, manifest says {shape[0]}")
    if ids is not None and table.column("id").to_pylist() != list(ids):
        raise DamagedEntry("stored row ids differ from the dataset's ids")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(shape)


@contextmanager
def _quiet_datasets():
    """No "Saving the dataset" bars for a cache write; restores the caller's setting."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _checksums(folder: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        sums[str(path.relative_to(folder))] = digest.hexdigest()
    return sums


def _key_parts(key, dataset_dict, split, column, extractor) -> dict:
    return {
        "key": key,
        "fingerprint": dataset_fingerprint(dataset_dict),
        "split": split,
        "column": column,
        "identity": extractor.identity,
    }


def entries() -> list[dict]:
    """Manifests of all cache entries (for a look at what is stored)."""
    root = workspace.cache_dir() / "features"
    out = []
    for manifest in sorted(root.glob(f"*/{MANIFEST}")) if root.exists() else []:
        out.append({"path": str(manifest.parent), **json.loads(manifest.read_text())})
    return out
