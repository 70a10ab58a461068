"""The world a dataset describes, behind one seam: `world_of(ds)`.
Code outside `mmlab.data` asks the world, never the columns, what is true behind the data:
words, objects per image, whether a caption fits a scene, classes shown, good negatives.
`SyntheticWorld` knows every scene, so negatives change the scene and describe it again;
`CaptionsWorld` knows only captions (and `label` or `categories`), so negatives change a word
and scene truth raises `SceneTruthUnknown`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mmlab.data import lexicons
from mmlab.data.lexicons import Lexicon, Mention, Relation

Pair = tuple[str, int, str]  # (caption, label, kind): a match pair
ATTRIBUTES = ("colour", "shape", "size")  # what every synthetic object has


class SceneTruthUnknown(ValueError):
    """Asked a world for scene truth it does not have (a captions-only dataset)."""


@dataclass(frozen=True)
class SceneKinds:
    """The canonical values a world's scenes are made of, and how many objects a scene holds."""

    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    sizes: tuple[str, ...]
    relations: tuple[str, ...]
    max_objects: int


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

    def kinds(self) -> SceneKinds:
        """The shapes, colours, sizes and relations scenes are made of."""
        raise self._unknown("the kinds of objects scenes are made of")

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

    # --------------------------------------------------------------- making scenes
    # What a prompt suite needs: the world's kinds, its caption wording, scenes that make a
    # description true, and those scenes drawn as the dataset draws them.
    def kinds(self) -> SceneKinds:
        from mmlab.data import synthetic

        return SceneKinds(
            synthetic.SHAPES, synthetic.COLOURS, synthetic.SIZES, synthetic.RELATIONS, 3
        )

    def describe(self, objects: Sequence[Mapping], relation: str | None = None) -> str:
        """A caption of `objects` ({colour, shape[, size]}, in mention order) in the dataset's
        most frequent wording (canonical words, the first template of its kind); `relation`:
        where the first object is relative to the second, stated in the caption."""
        from mmlab.data import synthetic

        n = len(objects)
        if n not in synthetic.TEMPLATES:
            raise ValueError(f"a scene holds 1 to {max(synthetic.TEMPLATES)} objects, got {n}")
        if relation is not None and (n < 2 or relation not in synthetic.RELATIONS):
            raise ValueError(
                f"relation {relation!r} needs two or more objects and one of {synthetic.RELATIONS}"
            )
        stated = relation is not None and n >= 2
        template = next(t for t, _, rel in synthetic.TEMPLATES[n] if rel == stated or n == 1)

        def word(kind: str, value: str) -> str:
            return synthetic.SYNONYMS[(kind, value)][0]

        slots = {}
        for key, o in zip("ABC", objects, strict=False):
            words = [word("colour", o["colour"]), word("shape", o["shape"])]
            if o.get("size"):
                words.insert(0, word("size", o["size"]))
            slots[key] = " ".join(["an" if words[0][0] in "aeiou" else "a", *words])
        if stated:
            slots["rel"] = word("relation", relation)
        return template.format(**slots)

    def arrange(
        self, objects: Sequence[Mapping], relation: str | None = None, seed: int = 0
    ) -> list[dict]:
        """A scene ({shape, colour, size, x, y} dicts, like the `objects` column) of `objects` in
        distinct cells, placed as the generator places them, with the first object `relation`
        of the second when given; missing sizes are drawn."""
        from mmlab.data import synthetic

        rng = np.random.default_rng(seed)
        cells = synthetic.GRID * synthetic.GRID
        for _ in range(1000):  # a relation holds for about a quarter of the placements
            placed = []
            for o, cell in zip(
                objects, rng.choice(cells, len(objects), replace=False), strict=True
            ):
                size = o.get("size") or synthetic.SIZES[int(rng.integers(len(synthetic.SIZES)))]
                slack = max(0.0, (1 / synthetic.GRID - synthetic.DIAMETER[size]) / 2 - 0.01)
                dx, dy = rng.uniform(-slack, slack, size=2)
                row, col = divmod(int(cell), synthetic.GRID)
                obj = synthetic.Obj(o["shape"], o["colour"], size, row, col, float(dx), float(dy))
                placed.append(obj.as_dict())
            if relation is None or self.relation(placed[0], placed[1]) == relation:
                return placed
        raise ValueError(f"could not place {len(objects)} objects with relation {relation!r}")

    def render(self, scene: Sequence[Mapping], image_size: int = 64, seed: int = 0):
        """`scene` drawn as the dataset draws its images (a PIL image, textured background)."""
        from mmlab.data import synthetic

        drawn = synthetic.scene_from_row({"objects": list(scene)})
        return synthetic.render(drawn, np.random.default_rng(seed), image_size)[0]

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
