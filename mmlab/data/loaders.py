"""Every dataset source, one schema: a `datasets.DatasetDict` of `train`/`validation`/`test` with
`id` (str), `image` (Image), `captions` (list[str]) and, where present, `audio`/`video`
(absolute paths), `label` and attribute columns.
Sources: `"synthetic[:n=300,seed=1,...]"`, an imagefolder directory, a Karpathy split file, a
COCO caption annotation file and `hf:NAME`. Referenced files are checked and content-hashed at
load; the result is cached keyed by the files' paths, sizes and times."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from mmlab.core import workspace
from mmlab.data import fingerprinting as fp
from mmlab.data import splits as splitting
from mmlab.data import synthetic

CAPTION_COLUMNS = ("captions", "caption", "text", "sentences")
AUDIO_COLUMNS = ("audio", "audio_path", "audio_file")
VIDEO_COLUMNS = ("video", "video_path", "video_file")
SPLIT_ORDER = ("train", "validation", "test")
SPLIT_NAMES = {"restval": "train", "val": "validation", "valid": "validation", "dev": "validation"}
SPLIT_NAMES |= {s: s for s in SPLIT_ORDER}
ON_ERROR = ("raise", "skip")
log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset source is missing, malformed or holds a bad file."""


@dataclass
class LoadReport:
    """What a load skipped (with `on_error="skip"`): `(split, file, reason)` per dropped row."""

    source: str
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def hf_cache_dir() -> str:
    """Where `datasets` keeps its Arrow files: the workspace cache, not ~/.cache."""
    return str(workspace.cache_dir() / "hf-datasets")


def load_dataset(
    source="synthetic",
    *,
    image_root=None,
    on_error: str = "raise",
    limit: int | None = None,
    split_seed: int = 0,
) -> datasets.DatasetDict:
    """Load any supported source into the common schema.
    `on_error="skip"` drops rows with a bad file (counted in `result.load_report`); `"raise"`
    stops at the first. `limit` keeps each split's first rows. Missing splits are made by
    `ensure_splits` (80/10/10 by image id, `split_seed`), described in `result.split_plan`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    kind, reader = _detect(source)
    with _quiet():
        splits = reader(source, image_root)
        splits, plan = splitting.ensure_splits(splits, split_seed, where=str(source))
        splits = _finish(splits, str(source), limit)
        report = LoadReport(source=str(source))
        splits, digests = _check_files(splits, on_error, report)
        plan.sizes = {s: len(splits[s]) for s in _ordered(splits)}
        splitting.check_sizes(plan.sizes, str(source), plan)
    if report.skipped:
        log.warning("%s: skipped %d rows with bad files", source, report.n_skipped)
    result = datasets.DatasetDict({s: splits[s] for s in _ordered(splits)})
    result.load_report = report
    result.source_kind = kind
    result.split_plan = plan
    fp.remember(result, fp.compute(result, digests))
    return result


@contextmanager
def _quiet():
    """No `datasets` progress bars for the small steps of a load (restored afterwards)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _ordered(splits) -> list[str]:
    return sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 9, s))


Reader = Callable[[object, object], dict]


def _detect(source) -> tuple[str, Reader]:
    """Which reader handles `source`; an unknown source lists the accepted forms."""
    text = str(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        return "synthetic", _read_synthetic
    if text.startswith("hf:"):
        return "hf", _read_hf
    path = _local_path(text)
    if path.is_dir():
        return "imagefolder", lambda src, root: _read_imagefolder(path, root)
    if path.is_file() and path.suffix.lower() == ".json":
        data = _read_json(path)
        kind = _json_kind(path, data)
        return kind, lambda src, root: READERS[kind](path, root, data)
    if not path.exists():
        raise DataError(
            f"dataset source {text!r} does not exist. Accepted: 'synthetic', "
            "'synthetic:n=..,seed=..,image_size=..', an imagefolder directory, a Karpathy "
            "split file (dataset_coco.json ...), a COCO captions json, or 'hf:NAME'."
        )
    raise DataError(
        f"cannot read {text!r}: expected a directory (imagefolder) or a .json file "
        "(Karpathy split or COCO captions)"
    )


def _local_path(text: str) -> Path:
    """A local source path; relative ones not found from the working directory are looked up from
    the workspace root, then from the checkout holding `mmlab`."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists():
        return path
    checkout = Path(__file__).resolve().parents[2]
    for base in (workspace.root(), checkout):
        if (base / path).exists():
            return base / path
    return path


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e


def _json_kind(path: Path, data) -> str:
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    if "annotations" in data:
        return "coco"
    if "images" not in data:
        raise DataError(
            f"{path}: no 'images' list. A Karpathy split file has 'images' (each with "
            "'filename', 'split', 'sentences'); a COCO captions file has 'images' and "
            f"'annotations'. Keys found: {sorted(data)}"
        )
    return "karpathy"


# ----------------------------------------------------------------------------- readers


def parse_synthetic(source: str) -> dict:
    """`"synthetic:n=300,seed=1,image_size=64"` -> keyword arguments of default_dataset."""
    types = {"n": int, "seed": int, "image_size": int, "audio": _flag, "video": _flag}
    _, _, spec = source.partition(":")
    options = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, eq, value = item.partition("=")
        if key not in types or not eq:
            raise DataError(
                f"bad synthetic option {item!r} in {source!r}; valid keys: {sorted(types)} "
                "(e.g. 'synthetic:n=300,seed=1,image_size=64')"
            )
        options[key] = types[key](value)
    return options


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise DataError(f"expected a boolean (1/0/true/false), got {value!r}")


def _read_synthetic(source, image_root) -> dict:
    path = synthetic.default_dataset(**parse_synthetic(str(source)))
    return _read_imagefolder(path, image_root)


def _read_imagefolder(source, image_root=None) -> dict:
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    meta_dirs = _metadata_dirs(root)
    if not meta_dirs:
        raise DataError(
            f"{root} has no metadata.jsonl or metadata.csv: an imagefolder needs one with a "
            f"'file_name' column and a caption column ({', '.join(CAPTION_COLUMNS)})"
        )
    try:  # naming the metadata files spares `datasets` walking every file of the tree
        loaded = datasets.load_dataset(
            "imagefolder", data_files=_metadata_files(root), cache_dir=hf_cache_dir()
        )
    except Exception as e:  # datasets' own message, prefixed with the folder
        raise DataError(f"could not read imagefolder {root}: {e}") from e
    splits = {k: v for split, ds in loaded.items() for k, v in _split_by_column(ds, split).items()}
    out = {}
    for split, ds in splits.items():
        ds = _captions_column(ds, f"{root} ({split})")
        ds = _absolute_paths(ds, meta_dirs, root)
        if "id" not in ds.column_names:
            paths = fp.file_paths(ds, "image")
            ds = ds.add_column("id", [Path(p).stem if p else str(i) for i, p in enumerate(paths)])
        out[split] = ds
    return out


def _metadata_files(root: Path) -> dict[str, list[str]]:
    """Metadata files by split: the first folder under `root` when it names a split, else `train`."""
    by_split: dict[str, list[str]] = {}
    for meta in _find_metadata(root):
        top = meta.relative_to(root).parts[0] if meta.parent != root else ""
        split = SPLIT_NAMES.get(top.lower(), "train")
        by_split.setdefault(split, []).append(str(meta))
    return by_split


def _find_metadata(root: Path) -> list[Path]:
    names = ("metadata.jsonl", "metadata.csv")
    found = sorted(p for name in names for p in root.rglob(name) if p.is_file())
    kinds = {p.suffix for p in found}
    if len(kinds) > 1:
        raise DataError(f"{root} mixes metadata.jsonl and metadata.csv files; use one kind")
    return found


def _metadata_dirs(root: Path) -> dict[str, Path]:
    """Each image path in a metadata file -> that file's folder (where relative paths start)."""
    owners = {}
    for meta in _find_metadata(root):
        names = _file_names(meta)
        if not names:
            where = meta.parent.relative_to(root).as_posix()
            raise DataError(f"{meta} has no rows: split folder {where!r} of {root} is empty")
        for name in names:
            owners[os.path.normpath(meta.parent / name)] = meta.parent
    return owners


def _file_names(meta: Path) -> list[str]:
    with open(meta, encoding="utf-8", newline="") as f:
        if meta.suffix == ".csv":
            rows = list(csv.DictReader(f))
        else:
            rows = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{meta}, line {number}: not valid JSON: {e}") from e
    if rows and "file_name" not in rows[0]:
        raise DataError(f"{meta}: no 'file_name' column; columns found: {sorted(rows[0])}")
    return [r["file_name"] for r in rows if r.get("file_name")]


def _split_by_column(ds, split: str) -> dict:
    """Rows with a `split` column go to the split they name."""
    if "split" not in ds.column_names:
        return {SPLIT_NAMES.get(split, split): ds}
    names = ds["split"]
    out = {}
    for name in sorted(set(names)):
        target = SPLIT_NAMES.get(str(name).lower())
        if target is None:
            raise DataError(f"unknown split {name!r}; valid: {sorted(SPLIT_NAMES)}")
        rows = [i for i, v in enumerate(names) if v == name]
        part = ds.select(rows).remove_columns("split")
        out[target] = datasets.concatenate_datasets([out[target], part]) if target in out else part
    return out


def _as_caption_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return _as_caption_list(json.loads(text))
            except json.JSONDecodeError:
                pass
        return [text] if text else []
    if isinstance(value, dict):
        return _as_caption_list(value.get("raw") or value.get("caption") or value.get("text"))
    return [c for item in value for c in _as_caption_list(item)]


def _captions_column(ds, where: str):
    found = [c for c in CAPTION_COLUMNS if c in ds.column_names]
    if not found:
        raise DataError(
            f"{where}: no caption column. Columns found: {ds.column_names}; "
            f"accepted caption columns: {list(CAPTION_COLUMNS)}"
        )
    column = found[0]

    def convert(batch):
        return {"captions": [_as_caption_list(v) for v in batch[column]]}

    drop = [column] if column != "captions" else []
    features = ds.features.copy()
    for c in drop + ["captions"]:
        features.pop(c, None)
    features["captions"] = datasets.List(datasets.Value("string"))
    return ds.map(
        convert, batched=True, remove_columns=drop or None, features=features, desc="captions"
    )


def _absolute_paths(ds, meta_dirs: dict[str, Path], root: Path):
    """Rename audio/video columns to `audio`/`video` and make their paths absolute."""
    renames = {}
    for target, aliases in (("audio", AUDIO_COLUMNS), ("video", VIDEO_COLUMNS)):
        present = [c for c in aliases if c in ds.column_names]
        if present:
            renames[target] = present[0]
    if not renames:
        return ds
    images = fp.file_paths(ds, "image")
    bases = [str(meta_dirs.get(os.path.normpath(p), root)) if p else str(root) for p in images]

    def resolve(batch, indices):
        out = {}
        for target, column in renames.items():
            out[target] = [
                None if v in (None, "") else os.path.normpath(os.path.join(bases[i], v))
                for i, v in zip(indices, batch[column], strict=True)
            ]
        return out

    drop = [c for t, c in renames.items() if c != t]
    features = ds.features.copy()
    for c in drop + list(renames):
        features.pop(c, None)
    features.update({target: datasets.Value("string") for target in renames})
    options = dict(batched=True, with_indices=True, remove_columns=drop or None, features=features)
    return ds.map(resolve, desc="paths", **options)


def _from_records(records: list[dict], where: str):
    strings = datasets.List(datasets.Value("string"))
    features = datasets.Features(
        id=datasets.Value("string"), image=datasets.Image(), captions=strings
    )
    if not records:
        raise DataError(f"{where}: no images")
    if "categories" in records[0]:  # COCO instance annotations: the objects in each image
        features["categories"] = strings
    columns = {k: [r[k] for r in records] for k in features}
    return datasets.Dataset.from_dict(columns, features=features)


def _read_karpathy(path: Path, image_root, data: dict) -> dict:
    images = data.get("images")
    if not isinstance(images, list):
        raise DataError(f"{path}: 'images' must be a list, found {type(images).__name__}")
    root = Path(image_root).expanduser().resolve() if image_root else path.parent.resolve()
    by_split: dict[str, list[dict]] = {}
    for index, entry in enumerate(images):
        missing = [k for k in ("filename", "sentences") if k not in entry]
        if missing:
            raise DataError(f"{path}: images[{index}] lacks {missing}; keys found: {sorted(entry)}")
        split = SPLIT_NAMES.get(str(entry.get("split", "train")).lower())
        if split is None:
            raise DataError(
                f"{path}: images[{index}] has split {entry.get('split')!r}; valid: {sorted(SPLIT_NAMES)}"
            )
        image = root / entry.get("filepath", "") / entry["filename"]
        ident = entry.get("cocoid", entry.get("imgid", Path(entry["filename"]).stem))
        captions = _as_caption_list(entry["sentences"])
        record = {"id": str(ident), "image": str(image), "captions": captions}
        by_split.setdefault(split, []).append(record)
    return {s: _from_records(rows, f"{path} ({s})") for s, rows in by_split.items()}


def _read_coco(path: Path, image_root, data: dict) -> dict:
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{path}: COCO captions need an '{key}' list; keys found: {sorted(data)}"
            )
    stem = path.stem  # captions_val2017 -> val2017 -> validation
    folder = stem.split("_", 1)[1] if "_" in stem else stem
    split = next((v for k, v in SPLIT_NAMES.items() if folder.lower().startswith(k)), "train")
    if image_root is None:
        guess = path.parent.parent / folder
        if not guess.is_dir():
            raise DataError(
                f"{path}: pass image_root= (the folder of its images; {guess} does not exist)"
            )
        image_root = guess
    root = Path(image_root).expanduser().resolve()
    captions: dict[int, list[str]] = {}
    for index, ann in enumerate(data["annotations"]):
        if "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{path}: annotations[{index}] lacks 'image_id' or 'caption'")
        captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    categories = _coco_instances(path.with_name(f"instances_{folder}.json"))
    records = []
    for index, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise DataError(f"{path}: images[{index}] lacks 'id' or 'file_name'")
        record = {
            "id": str(image["id"]),
            "image": str(root / image["file_name"]),
            "captions": captions.get(image["id"], []),
        }
        if categories is not None:
            record["categories"] = categories.get(image["id"], [])
        records.append(record)
    return {split: _from_records(records, str(path))}


def _coco_instances(path: Path) -> dict[int, list[str]] | None:
    """Sorted distinct categories per image from the COCO instance annotations beside the captions
    file, or None without one."""
    if not path.is_file():
        return None
    data = _read_json(path)
    try:
        names = {c["id"]: c["name"] for c in data["categories"]}
        found: dict[int, set[str]] = {}
        for ann in data["annotations"]:
            found.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    except (KeyError, TypeError) as e:
        raise DataError(
            f"{path}: COCO instances need 'categories' (id, name) and 'annotations' (image_id, "
            f"category_id); missing {e}"
        ) from e
    return {image: sorted(objects) for image, objects in found.items()}


READERS = {"karpathy": _read_karpathy, "coco": _read_coco}


# ----------------------------------------------------------------------------- the hub


def hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached now (None when it can), within `timeout` seconds."""
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    result: list = []

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"no connection to huggingface.co ({e.__class__.__name__}: {e})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer from huggingface.co within {timeout:.0f} s"


def _read_hf(source, image_root) -> dict:
    name = str(source)[3:]
    reason = hub_offline_reason()
    if reason:
        raise ConnectionError(
            f"cannot load {source!r} from the Hugging Face hub: {reason}. Use a local source "
            "(an imagefolder directory, a Karpathy or COCO json) or 'synthetic'."
        )
    repo, _, config = name.partition(":")
    loaded = datasets.load_dataset(repo, config or None, cache_dir=hf_cache_dir())
    out = {}
    for split, ds in loaded.items():
        image_columns = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        if not image_columns:
            raise DataError(f"{source} ({split}): no Image column; columns: {ds.column_names}")
        if image_columns[0] != "image":
            ds = ds.rename_column(image_columns[0], "image")
        ds = _captions_column(ds, f"{source} ({split})")
        if "id" not in ds.column_names:
            ds = ds.add_column("id", [f"{split}-{i}" for i in range(len(ds))])
        out.setdefault(SPLIT_NAMES.get(split, split), ds)
    return out


# ----------------------------------------------------------------------------- checks


def _finish(splits: dict, source: str, limit: int | None) -> dict:
    """Common column order, `id` as string, the limit, and no empty split."""
    out = {}
    for split, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"{source}: split {split!r} is empty")
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        if ds.features["id"] != datasets.Value("string"):
            ds = ds.cast_column("id", datasets.Value("string"))
        first = [c for c in ("id", "image", "captions", "audio", "video") if c in ds.column_names]
        ds = ds.select_columns(first + [c for c in ds.column_names if c not in first])
        out[split] = ds
    return out


def _check_image(path: str) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()


def _check_audio(path: str) -> None:
    import soundfile

    if soundfile.info(path).frames <= 0:
        raise ValueError("no audio frames")


def _check_video(path: str) -> None:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")


CHECKS = {"image": _check_image, "audio": _check_audio, "video": _check_video}


def _check_split(ds, split: str) -> tuple[dict[str, list[str]], dict[int, tuple[str, str]]]:
    """Digest every referenced file and find the bad ones: (digests by column, bad rows)."""
    digests: dict[str, list[str]] = {}
    bad: dict[int, tuple[str, str]] = {}
    for column, check in CHECKS.items():
        if column not in ds.column_names:
            continue
        paths = fp.file_paths(ds, column)
        column_digests = []
        for row, path in enumerate(paths):
            if path is None:  # embedded bytes (hub datasets) or an optional file
                column_digests.append("none")
                continue
            digest = "missing"
            try:
                digest = fp.file_digest(path)
                check(path)
            except FileNotFoundError:
                bad.setdefault(row, (path, f"{column} file not found"))
            except Exception as e:  # any decoder error means an unreadable file
                reason = f"unreadable {column} file ({e.__class__.__name__}: {e})"
                bad.setdefault(row, (path, reason))
            column_digests.append(digest)
        digests[column] = column_digests
    return digests, bad


def _stat_key(ds, split: str) -> str:
    """A cheap key for the check cache: the table's fingerprint plus each file's stat."""
    h = hashlib.blake2b(digest_size=16)
    h.update(fp.table_digest(ds).encode())
    for column in CHECKS:
        if column in ds.column_names:
            for path in fp.file_paths(ds, column):
                try:
                    st = os.stat(path) if path else None
                    h.update(f"{path}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{path}|missing\n".encode())
    return h.hexdigest()


def _cached_check(ds, split: str):
    key = _stat_key(ds, split)
    cache = workspace.cache_dir() / "data-checks" / f"{key}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        return saved["digests"], {int(k): tuple(v) for k, v in saved["bad"].items()}
    digests, bad = _check_split(ds, split)
    with workspace.atomic_path(cache) as tmp:
        tmp.write_text(json.dumps({"digests": digests, "bad": bad}), encoding="utf-8")
    return digests, bad


def _check_files(splits: dict, on_error: str, report: LoadReport):
    """Raise on (or drop and count) rows whose files are missing or unreadable."""
    out, all_digests = {}, {}
    for split, ds in splits.items():
        digests, bad = _cached_check(ds, split)
        if bad and on_error == "raise":
            row, (path, reason) = min(bad.items())
            raise DataError(
                f"{reason}: {path} (split {split!r}, row {row}; {len(bad)} bad rows in this "
                "split). Fix or remove it, or load with on_error='skip'."
            )
        if bad:
            keep = [i for i in range(len(ds)) if i not in bad]
            report.skipped += [(split, path, reason) for _, (path, reason) in sorted(bad.items())]
            if not keep:
                raise DataError(f"{report.source}: every row of split {split!r} has a bad file")
            ds = ds.select(keep)
            digests = {c: [d[i] for i in keep] for c, d in digests.items()}
        out[split], all_digests[split] = ds, digests
    return out, all_digests
