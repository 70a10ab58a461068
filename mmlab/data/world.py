"""The world a dataset describes, behind one seam: `world_of(ds)`.
Code outside `mmlab.data` asks the world, never the columns, what is true behind the data:
words, objects per image, whether a caption fits a scene, classes shown, good negatives.
`SyntheticWorld` knows every scene, so negatives change the scene and describe it again;
`CaptionsWorld` knows only captions (and `label` or `categories`), so negatives change a word
and scene truth raises `SceneTruthUnknown`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from mmlab.data import lexicons
from mmlab.data.lexicons import Lexicon, Mention, Relation

Pair = tuple[str, int, str]  # (caption, label, kind): a match pair
ATTRIBUTES = ("colour", "shape", "size")  # what every synthetic object has


class SceneTruthUnknown(ValueError):
    """Asked a world for scene truth it does not have (a captions-only dataset)."""


def _columns(split) -> list[str]:
    return list(split.column_names)


class World:
    """What a dataset's world answers; `world_of(ds)` picks the implementation."""

    name: str = "world"
    knows_scenes: bool = False  # whether each image's objects (and their places) are known
    lexicon: Lexicon

    # --------------------------------------------------------------- ground truth
    def scenes(self, split) -> list[list[dict]] | None:
        """Each row's objects ({shape, colour, size, x, y} dicts), or None when unknown."""
        return None

    def ground_truth(self, split) -> dict[str, object]:
        """id -> the objects of each image, as `mmlab.metrics.grounded_scores` reads them."""
        return lexicons.ground_truth(split, self.lexicon)

    def attribute_truth(self, split) -> dict[str, tuple[list[str], list[set[str]]]]:
        """attribute -> (classes, the set of true classes per row) from a `label` column; {} without."""
        if "label" not in _columns(split):
            return {}
        labels = [str(v) for v in split["label"]]
        return {"label": (sorted(set(labels)), [{v} for v in labels])}

    # --------------------------------------------------------------- captions against scenes
    def parse(self, caption: str) -> tuple[list[Mention], list[Relation]]:
        """The objects a caption names and the relations it states, in this world's words."""
        return lexicons.parse_caption(caption, self.lexicon)

    def relation(self, a: Mapping, b: Mapping) -> str:
        """Where object `a` is relative to object `b`."""
        raise self._unknown("where objects are relative to each other")

    def fits(self, caption: str, scene: Sequence[Mapping]) -> bool:
        """Whether `caption` is true of `scene`."""
        raise self._unknown("whether a caption is true of a scene")

    def fit_matrix(self, captions: Sequence[str], scenes: Sequence) -> np.ndarray:
        """[captions, scenes] booleans: whether each caption is true of each scene."""
        raise self._unknown("whether a caption is true of a scene")

    # --------------------------------------------------------------- negatives
    def can_pair(self, split) -> bool:
        """Whether `match_pairs` can draw pairs for the rows of `split`."""
        return "captions" in _columns(split)

    def match_pairs(self, split, k: int, seed: int = 0) -> list[list[Pair]]:
        """`k` more (caption, label, kind) match pairs per training row, deterministic in (row id, seed)."""
        raise NotImplementedError

    def hard_negatives(self, split, per_row: int, seed: int = 1) -> list[list[str]]:
        """Up to `per_row` captions per row that are wrong for it by construction."""
        raise self._unknown("hard negatives (scenes changed in one attribute)")

    def _unknown(self, what: str) -> SceneTruthUnknown:
        return SceneTruthUnknown(
            f"{what} needs the scenes behind the images (the embedded synthetic data); the "
            f"{self.name} world knows only what its captions say"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lexicon={self.lexicon.name!r})"


class SyntheticWorld(World):
    """The embedded scenes: objects, places and the generator's exact negatives are known."""

    name = "synthetic"
    knows_scenes = True

    def __init__(self) -> None:
        self.lexicon = lexicons.get("synthetic")
        # a caption is parsed once, however many scenes it is checked against
        self._parsed: Callable = lru_cache(maxsize=8192)(super().parse)

    def parse(self, caption: str) -> tuple[list[Mention], list[Relation]]:
        return self._parsed(caption)

    def scenes(self, split) -> list[list[dict]]:
        return split["objects"]

    def attribute_truth(self, split) -> dict[str, tuple[list[str], list[set[str]]]]:
        """A scene shows a class when one of its objects has it; every object attribute is a task."""
        out = {}
        scenes = self.scenes(split)
        for attribute in ATTRIBUTES:
            truth = [{o[attribute] for o in scene} for scene in scenes]
            out[attribute] = (sorted(set().union(*truth)), truth)
        return out

    def relation(self, a: Mapping, b: Mapping) -> str:
        from mmlab.data.synthetic import relation

        return relation(a, b)

    def fits(self, caption: str, scene: Sequence[Mapping]) -> bool:
        """True when `caption` names exactly the scene's objects, with the stated sizes and relations."""
        mentions, relations = self.parse(caption)
        looks = {(o["colour"], o["shape"]): o for o in scene}
        if {m.look for m in mentions} != set(looks) or len(mentions) != len(scene):
            return False
        if any(m.size not in (None, looks[m.look]["size"]) for m in mentions):
            return False
        return all(
            self.relation(looks[r.first.look], looks[r.second.look]) == r.relation
            for r in relations
        )

    def fit_matrix(self, captions: Sequence[str], scenes: Sequence) -> np.ndarray:
        by_looks: dict[frozenset, list[int]] = {}  # only scenes with the named objects can fit
        for j, scene in enumerate(scenes):
            by_looks.setdefault(frozenset((o["colour"], o["shape"]) for o in scene), []).append(j)
        raw = np.zeros((len(captions), len(scenes)), dtype=bool)
        for i, caption in enumerate(captions):
            looks = frozenset(m.look for m in self.parse(caption)[0])
            for j in by_looks.get(looks, []):
                raw[i, j] = self.fits(caption, scenes[j])
        return raw

    def can_pair(self, split) -> bool:
        return True

    def _records(self, split) -> list[dict]:
        return split.select_columns(["id", "objects", "motion"]).to_list()

    def match_pairs(self, split, k: int, seed: int = 0) -> list[list[Pair]]:
        """The generator's own pairs: a negative is the scene changed in one attribute, described again."""
        from mmlab.data.synthetic import more_match_pairs

        return [more_match_pairs(r, k, seed=seed) for r in self._records(split)]

    def hard_negatives(self, split, per_row: int, seed: int = 1) -> list[list[str]]:
        from mmlab.data.synthetic import more_match_pairs

        out = []
        for record in self._records(split):
            drawn = more_match_pairs(record, 4 * per_row, seed=seed)  # about half are negatives
            out.append([text for text, label, _ in drawn if label == 0][:per_row])
        return out


class CaptionsWorld(World):
    """A user's own data: only what the captions (and label or category columns) say."""

    name = "captions-only"

    def __init__(self, lexicon: Lexicon | None = None) -> None:
        self.lexicon = lexicon or lexicons.get("coco")

    def match_pairs(self, split, k: int, seed: int = 0) -> list[list[Pair]]:
        """A negative changes one word of a kind or borrows another image's caption."""
        if not self.can_pair(split):
            raise ValueError(
                f"match pairs need a 'captions' column; the split has {_columns(split)}"
            )
        from mmlab.data import negatives

        return negatives.more_match_pairs(split, k, seed=seed)


@lru_cache(maxsize=1)
def synthetic_world() -> SyntheticWorld:
    """The embedded world (one for every dataset generated by `mmlab.data.synthetic`)."""
    return SyntheticWorld()


def world_of(ds) -> World:
    """The world of `ds` (a DatasetDict, {split: Dataset}, one split, or a `World`): synthetic where
    the splits carry an `objects` column of scenes, else captions-only via the COCO lexicon."""
    if isinstance(ds, World):
        return ds
    # a DatasetDict (or any {split: Dataset}) is known by its first split
    first = next(iter(ds.values())) if isinstance(ds, Mapping) else ds
    return synthetic_world() if lexicons.has_scenes(first) else CaptionsWorld()
