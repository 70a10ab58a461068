"""The feature cache: each (dataset, split, column, extractor) computed once, then memory-mapped.
An entry is a folder, written atomically: `features.npy` (float32, C order: one array the
readers map without loading it), `ids.arrow` (the rows' ids, an Arrow IPC file) and a
`manifest.json` (key parts, shape, SHA-256 of each file); one that no longer matches its
manifest is reported and rebuilt. Images and videos stream batch by batch from the extractor's
DataLoader to disk, so neither extraction nor reading holds a split in memory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
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
FEATURES = "features.npy"
IDS = "ids.arrow"
# The entry layout joins every key: entries written in an older layout are misses, not damage.
LAYOUT = 2


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
            _discard(entry)
    items = column_items(split_ds, column, extractor.modality)
    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    if extractor.modality == "text" or extractor.kind == "sequence" or not _streams(extractor):
        # small, and a split's sequences are padded to its longest: computed whole
        chunks: Iterable[torch.Tensor] = [extractor.extract(items, **options)]
    else:
        chunks = extractor.batches(items, **options)
    parts = _key_parts(key, dataset_dict, split, column, extractor)
    try:
        write_entry(entry, chunks, ids, parts=parts, rows=len(items))
    except OSError:
        # A concurrent kernel (parallel notebooks) renamed the same entry into place first.
        if not (entry / MANIFEST).exists():
            raise
    return read_entry(entry, verify=False)


def _discard(entry: Path) -> None:
    """Move a damaged entry aside, then delete it; a concurrent kernel may have done so first."""
    aside = entry.with_name(f".{entry.name}.{os.getpid()}.damaged")
    try:
        os.replace(entry, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _streams(extractor) -> bool:
    return callable(getattr(extractor, "batches", None))


def cache_key(fingerprint: str, split: str, column: str, identity: dict[str, Any]) -> str:
    blob = json.dumps([fingerprint, split, column, identity, LAYOUT], sort_keys=True, default=str)
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
def write_entry(
    entry: Path,
    values: torch.Tensor | Iterable[torch.Tensor],
    ids: list[str] | None,
    parts: dict,
    rows: int | None = None,
) -> None:
    """Write an entry from one tensor, or from batches of `rows` rows in all as they come."""
    if isinstance(values, torch.Tensor):
        values, rows = [values], len(values)
    if rows is None:
        raise ValueError("write_entry: batches need `rows`, the number of rows they add up to")
    # A complete entry is never replaced: a reader in another kernel may be mapping it.
    with workspace.atomic_path(entry, replace=False) as tmp:
        tmp.mkdir()
        shape = _write_array(tmp / FEATURES, values, rows)
        ids = list(ids) if ids is not None else [str(i) for i in range(rows)]
        if len(ids) != rows:
            raise ValueError(f"{len(ids)} ids for {rows} rows of features")
        table = pa.table({"id": pa.array(ids, pa.string())})
        with pa.OSFile(str(tmp / IDS), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        manifest = {**parts, "shape": shape, "dtype": "float32", "files": _checksums(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))


def _write_array(path: Path, chunks: Iterable[torch.Tensor], rows: int) -> list[int]:
    """An .npy file of `rows` rows written batch by batch (plain writes: nothing is mapped, so
    the pages written stay out of this process's memory); returns its shape."""
    shape, written = None, 0
    with open(path, "wb") as f:
        for chunk in chunks:
            array = np.ascontiguousarray(chunk.detach().cpu().numpy(), dtype=np.float32)
            if shape is None:
                shape = (rows, *array.shape[1:])
                header = {"descr": "<f4", "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(f, header)
            elif array.shape[1:] != shape[1:]:
                raise ValueError(f"a batch of shape {array.shape} among rows of {shape[1:]}")
            written += len(array)
            if written > rows:
                raise ValueError(f"more than the {rows} rows announced")
            f.write(array.astype("<f4", copy=False).data)
    if written != rows:
        raise ValueError(f"{written} rows of features written, {rows} announced")
    return list(shape)


def read_entry(entry: Path, ids: list[str] | None = None, verify: bool = True) -> torch.Tensor:
    """The stored tensor, memory-mapped copy-on-write (pages are read as they are touched; an
    in-place change stays in this process), after checking the files against the manifest
    (`verify`), the shape and the row ids."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        shape = manifest["shape"]
        if verify and _checksums(entry) != manifest["files"]:
            raise DamagedEntry("files do not match the manifest's checksums")
        array = np.load(entry / FEATURES, mmap_mode="c")
        if ids is not None:
            with pa.memory_map(str(entry / IDS)) as source:
                stored = pa.ipc.open_file(source).read_all().column("id").to_pylist()
    except DamagedEntry:
        raise
    except Exception as err:  # unreadable manifest, array or ids: the entry is damaged
        raise DamagedEntry(f"{type(err).__name__}: {err}") from err
    if list(array.shape) != shape or array.dtype != np.float32:
        raise DamagedEntry(f"stored {array.dtype} {list(array.shape)}, manifest says {shape}")
    if ids is not None and stored != list(ids):
        raise DamagedEntry("stored row ids differ from the dataset's ids")
    return torch.from_numpy(array)


def _checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of an entry but its manifest."""
    sums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
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
