"""A content fingerprint of a DatasetDict: same rows and file contents, same hash (no paths or
times). It reads every file, so it is remembered per split `_fingerprint` and handed over by
loaders, which read the files anyway."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

FILE_COLUMNS = ("image", "audio", "video")
_WHOLE_FILE_LIMIT = 4 << 20  # bigger files are hashed by size, head and tail
_EDGE = 1 << 20

_remembered: dict[tuple, str] = {}


def file_digest(path) -> str:
    """blake2b of a file's content (of size, first and last MiB for files over 4 MiB)."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= _WHOLE_FILE_LIMIT:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def _state_key(dataset_dict) -> tuple:
    return tuple(sorted((split, ds._fingerprint) for split, ds in dataset_dict.items()))


def file_paths(ds, column: str) -> list[str | None]:
    """Paths of a file column without decoding it: image struct paths or plain strings."""
    table = ds.select_columns([column]).with_format("arrow")[:]
    values = table.column(column).to_pylist()
    if values and isinstance(values[0], dict) or column == "image":
        return [v.get("path") if isinstance(v, dict) else v for v in values]
    return values


def _image_bytes(ds) -> list[bytes | None]:
    values = ds.select_columns(["image"]).with_format("arrow")[:].column("image").to_pylist()
    return [v.get("bytes") if isinstance(v, dict) else None for v in values]


def table_digest(ds) -> str:
    """Digest of the non-file columns of one split, order and types included."""
    h = hashlib.blake2b(digest_size=16)
    columns = [c for c in ds.column_names if c not in FILE_COLUMNS]
    h.update(json.dumps(columns).encode())
    h.update(repr({c: ds.features[c] for c in columns}).encode())
    for batch in ds.select_columns(columns).with_format("python").iter(batch_size=1000):
        h.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return h.hexdigest()


def split_digest(ds, file_digests: dict[str, list[str]] | None = None) -> str:
    """Digest of one split: its table plus the content of every referenced file."""
    h = hashlib.blake2b(digest_size=16)
    h.update(table_digest(ds).encode())
    for column in FILE_COLUMNS:
        if column not in ds.column_names:
            continue
        digests = (file_digests or {}).get(column)
        if digests is None:
            digests = _column_digests(ds, column)
        h.update(column.encode())
        h.update("\n".join(digests).encode())
    return h.hexdigest()


def _column_digests(ds, column: str) -> list[str]:
    paths = file_paths(ds, column)
    blobs = _image_bytes(ds) if column == "image" else [None] * len(paths)
    out = []
    for path, blob in zip(paths, blobs, strict=True):
        if blob is not None:
            out.append(hashlib.blake2b(blob, digest_size=16).hexdigest())
        elif path and Path(path).is_file():
            out.append(file_digest(path))
        else:
            out.append(f"missing:{Path(path).name if path else ''}")
    return out


def compute(dataset_dict, file_digests: dict[str, dict[str, list[str]]] | None = None) -> str:
    """The content fingerprint, computed now. `file_digests[split][column]` may be supplied."""
    h = hashlib.blake2b(digest_size=16)
    for split in sorted(dataset_dict):
        h.update(split.encode())
        h.update(split_digest(dataset_dict[split], (file_digests or {}).get(split)).encode())
    return h.hexdigest()


def remember(dataset_dict, value: str) -> str:
    """Record the fingerprint of this dataset state (loaders call this at load time)."""
    _remembered[_state_key(dataset_dict)] = value
    with contextlib.suppress(AttributeError):  # a plain dict of splits
        dataset_dict.mmlab_fingerprint = value
    return value


def fingerprint(dataset_dict) -> str:
    """The stable content fingerprint of a DatasetDict (or dict of Datasets); cheap when
    the dataset came from `load_dataset` or was fingerprinted before in this process."""
    value = getattr(dataset_dict, "mmlab_fingerprint", None)
    key = _state_key(dataset_dict)
    if value is not None and _remembered.get(key) == value:
        return value
    if key not in _remembered:
        _remembered[key] = compute(dataset_dict)
    return _remembered[key]
