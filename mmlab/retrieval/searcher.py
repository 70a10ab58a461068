"""A trained dual encoder with its embedded galleries: what `mmlab search` answers queries with.
On disk: `weights.pt`, `config.json`, per gallery `gallery_<modality>.npz` (unit vectors) and
`.json` (ids, paths or texts), and for MiniLM `query_encoder/` (`BertEncoder`), so text
queries skip importing transformers."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmlab.features.registry import parse_encoder
from mmlab.features.text import ExportedMiniLM
from mmlab.retrieval.index import make_index
from mmlab.retrieval.model import DualConfig, DualEncoder
from mmlab.retrieval.pairs import Side, caption_table, make_extractor, side


@dataclass
class Gallery:
    """The items a query is answered with: ids, where each comes from, and its unit vector."""

    modality: str
    ids: list[str]
    vectors: np.ndarray
    paths: list[str] | None = None  # media files (images, audio, video)
    texts: list[str] | None = None  # captions

    def describe(self, i: int) -> str:
        if self.texts is not None:
            return self.texts[i]
        return self.paths[i] if self.paths is not None else ""


def media_paths(ds_split, column: str) -> list[str] | None:
    """The file path of each row's media (images decode to PIL: read their paths instead)."""
    import datasets

    if column not in ds_split.column_names:
        return None
    feature = ds_split.features[column]
    if isinstance(feature, datasets.Image):
        values = ds_split.cast_column(column, datasets.Image(decode=False))[column]
        return [str(v.get("path") or "") for v in values]
    return [str(v) for v in ds_split[column]]


def gallery(model: DualEncoder, data_side: Side, ids: list[str], paths=None) -> Gallery:
    vectors = model.embed(data_side.modality, data_side.x).numpy()
    return Gallery(data_side.modality, ids, vectors, paths, data_side.texts)


def dataset_galleries(
    model: DualEncoder, ds, split: str = "test", device: str = "cpu", modalities=None
) -> dict[str, Gallery]:
    """Galleries of the model's modalities (default: both) embedded from `ds[split]` (cached
    features): the images (ids, paths) and the captions (ids `row#j`, texts)."""
    from mmlab.retrieval.pairs import COLUMNS

    if split not in ds:
        raise KeyError(f"split {split!r} not in the gallery dataset; it has {list(ds)}")
    out = {}
    for modality in modalities or model.config.modalities:
        extractor = make_extractor(modality, model.config.encoders[modality], device)
        data_side = side(ds, split, modality, extractor)
        if modality == "text":
            ids, _, _ = caption_table(ds[split])
            out[modality] = gallery(model, data_side, ids)
        else:
            paths = media_paths(ds[split], COLUMNS[modality])
            out[modality] = gallery(model, data_side, list(ds[split]["id"]), paths)
    return out


QUERY_ENCODER = "query_encoder"


class Searcher:
    def __init__(self, model: DualEncoder, galleries: dict[str, Gallery], index: str = "auto"):
        self.model = model.eval()
        self.galleries = galleries
        self.index_kind = index
        self.indexes = {m: make_index(g.vectors, index) for m, g in galleries.items()}
        self._extractors = {}
        self.folder: Path | None = None  # where it was loaded from (`load`)

    def other(self, modality: str) -> str:
        modalities = self.model.config.modalities
        if modality not in modalities:
            raise KeyError(
                f"this model's pair is {self.model.config.pair}: queries must be one of "
                f"{list(modalities)}, not {modality!r}"
            )
        return modalities[1 - modalities.index(modality)]

    def encode(self, modality: str, items: list) -> np.ndarray:
        """Unit vectors of raw queries (strings, or media paths / PIL images)."""
        if modality not in self._extractors:
            exported = self._exported()
            if modality == "text" and exported is not None:
                self._extractors[modality] = ExportedMiniLM(exported)
            else:
                spec = self.model.config.encoders[modality]
                self._extractors[modality] = make_extractor(modality, spec, "cpu")
        with torch.inference_mode():
            x = self._extractors[modality].extract(items)
        return self.model.embed(modality, x).numpy()

    def _exported(self) -> Path | None:
        """The exported text encoder saved with this searcher, if any."""
        folder = self.folder / QUERY_ENCODER if self.folder else None
        return folder if folder is not None and ExportedMiniLM.exists(folder) else None

    def use_dataset(self, source: str, split: str = "test", modality: str | None = None) -> None:
        """Replace the gallery of `modality` (default: both) by `source`'s `split`, embedded."""
        from mmlab.data import load_dataset

        ds = load_dataset(source)
        modalities = [modality] if modality else None
        for m, g in dataset_galleries(self.model, ds, split, "cpu", modalities).items():
            self.galleries[m], self.indexes[m] = g, make_index(g.vectors, self.index_kind)

    def search(self, modality: str, items: list, k: int = 5) -> pd.DataFrame:
        """Top-k gallery items of the other modality for each query: one row per hit."""
        target = self.other(modality)
        if target not in self.galleries:
            raise KeyError(f"no {target} gallery in this model; it has {list(self.galleries)}")
        return self.search_vectors(target, self.encode(modality, items), items, k)

    def search_vectors(self, target: str, vectors: np.ndarray, queries: list, k: int):
        g = self.galleries[target]
        scores, indices = self.indexes[target].search(vectors, k)
        rows = [
            (str(q), r + 1, g.ids[i], g.describe(i), float(s))
            for q, row_s, row_i in zip(queries, scores, indices, strict=True)
            for r, (s, i) in enumerate(zip(row_s, row_i, strict=True))
        ]
        return pd.DataFrame(rows, columns=["query", "rank", "id", "item", "score"])

    # -- files --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "weights.pt")
        (folder / "config.json").write_text(json.dumps(self.model.config.to_dict(), indent=1))
        for m, g in self.galleries.items():
            np.savez(folder / f"gallery_{m}.npz", vectors=g.vectors.astype(np.float32))
            meta = {"modality": m, "ids": g.ids, "paths": g.paths, "texts": g.texts}
            (folder / f"gallery_{m}.json").write_text(json.dumps(meta))
        text = self.model.config.encoders.get("text")
        if self._exported() is not None:
            shutil.copytree(self._exported(), folder / QUERY_ENCODER, dirs_exist_ok=True)
        elif text is not None and parse_encoder(text)[0] == "minilm":
            make_extractor("text", text, "cpu").export(folder / QUERY_ENCODER)
        return folder

    @classmethod
    def load(cls, folder: str | Path, index: str = "auto") -> Searcher:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json: not a saved retrieval model")
        model = DualEncoder(DualConfig.from_dict(json.loads((folder / "config.json").read_text())))
        model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu"))
        galleries = {}
        for meta_path in sorted(folder.glob("gallery_*.json")):
            meta = json.loads(meta_path.read_text())
            vectors = np.load(meta_path.with_suffix(".npz"))["vectors"]
            galleries[meta["modality"]] = Gallery(
                meta["modality"], meta["ids"], vectors, meta["paths"], meta["texts"]
            )
        searcher = cls(model, galleries, index)
        searcher.folder = folder
        return searcher
