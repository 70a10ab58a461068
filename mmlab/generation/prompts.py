"""Prompts with their truth: what a generated image must show, in the categories GenEval (Ghosh
et al. 2023) and T2I-CompBench (Huang et al. 2023) report.

    suite = prompt_suite(ds, per_category=24, seed=0)   # list[Prompt], balanced, seeded
    real = caption_prompts(ds, split="test", n=200)      # held-out captions (R-precision, FID)
    [p.text for p in suite]                              # what the generators are asked for

A `Prompt` has `text`, `category` (one of `CATEGORIES`, or "caption" for a held-out caption),
`objects` (the (colour, shape) of each named object, in mention order), `relations`
((i, relation, j): object i is `relation` of object j) and, for a held-out caption, `image_id`
(the real image it describes). `count` is the number of named objects. What counts as right for
each category is `mmlab.generation.faithfulness.judge`.

Categories (each balanced over the values it tests):
- `single`: one object, shape and colour ("a red circle on a textured background"), every
  shape x colour equally often;
- `colour`: one object, balanced over colours first (GenEval's "colors");
- `two_objects`: two objects of different shapes ("a red circle and a blue square");
- `counting`: 1, 2 or 3 objects of distinct looks, equally often, no relation stated;
- `position`: two objects and a relation, the four relations equally often;
- `colour_binding`: two objects of different shapes and different colours, so swapped colours
  are wrong.
Texts are worded as the dataset's captions are (`World.describe`), in canonical words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmlab.data import world_of
from mmlab.data.world import World

CATEGORIES = ("single", "colour", "two_objects", "counting", "position", "colour_binding")
CAPTION = "caption"  # the category of a held-out real caption

Look = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str
    objects: tuple[Look, ...]  # what must be in the image, in mention order
    relations: tuple[tuple[int, str, int], ...] = ()  # (i, relation, j): object i is rel of j
    image_id: str | None = None  # the real image a held-out caption describes

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def relation(self) -> str | None:
        """The first stated relation (of object 0 to object 1 in the suite's prompts)."""
        return self.relations[0][1] if self.relations else None


def _balanced(values: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """`n` values, each as often as the others (within one), in a seeded order."""
    reps = -(-n // len(values))
    out = [str(v) for _ in range(reps) for v in rng.permutation(values)]
    return out[:n]


def _pair(values: Sequence[str], i: int, order: Sequence[str]) -> tuple[str, str]:
    """The i-th ordered pair of distinct values: each value as often first as second."""
    k = len(values)
    a = i % k
    b = (a + 1 + (i // k) % (k - 1)) % k
    return order[a], order[b]


def prompt_suite(
    ds, per_category: int = 24, seed: int = 0, categories: Sequence[str] = CATEGORIES
) -> list[Prompt]:
    """`per_category` prompts of each category (see the module docstring), seeded; `ds` is a
    dataset (its world decides the words) or a `World`. Needs a world that knows its scenes
    (the embedded data): on captions-only data use `caption_prompts`."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(
            f"unknown prompt categories {unknown}; valid names: {', '.join(CATEGORIES)}"
        )
    if per_category < 1:
        raise ValueError(f"per_category must be at least 1, got {per_category}")
    world = world_of(ds)
    kinds = world.kinds()  # raises SceneTruthUnknown, naming the fix, on captions-only data
    rng = np.random.default_rng(seed)
    out: list[Prompt] = []
    for category in categories:
        out += [_make(world, category, look) for look in _draw(category, kinds, per_category, rng)]
    return out


def _draw(category: str, kinds, n: int, rng) -> list[tuple[tuple[Look, ...], str | None]]:
    """(objects, relation) of `n` prompts of `category`, balanced as the docstring says."""
    shapes = [str(v) for v in rng.permutation(kinds.shapes)]
    colours = [str(v) for v in rng.permutation(kinds.colours)]
    if category in ("single", "colour"):
        # shapes and colours coprime in number (5, 6): i -> (i mod 5, i mod 6) visits every
        # pair once per 30, each value within one of the others at any length
        offset = int(rng.integers(len(shapes) * len(colours)))
        first, second = (colours, shapes) if category == "colour" else (shapes, colours)
        looks = [
            (first[(i + offset) % len(first)], second[(i + offset) % len(second)]) for i in range(n)
        ]
        if category == "single":
            looks = [(c, s) for s, c in looks]
        return [(((c, s),), None) for c, s in looks]
    if category == "two_objects":
        pairs = [_pair(shapes, i, shapes) for i in range(n)]
        return [(tuple((str(rng.choice(kinds.colours)), s) for s in pair), None) for pair in pairs]
    if category == "colour_binding":
        out = []
        for i in range(n):
            a, b = _pair(shapes, i, shapes)
            ca, cb = _pair(colours, i + int(rng.integers(len(colours))), colours)
            out.append((((ca, a), (cb, b)), None))
        return out
    if category == "counting":
        counts = _balanced([str(k) for k in range(1, kinds.max_objects + 1)], n, rng)
        all_looks = [(c, s) for s in kinds.shapes for c in kinds.colours]
        out = []
        for k in counts:
            chosen = rng.choice(len(all_looks), int(k), replace=False)
            out.append((tuple(all_looks[int(j)] for j in chosen), None))
        return out
    # position: two objects of different shapes and colours, the relations balanced
    out = []
    for i, relation in enumerate(_balanced(kinds.relations, n, rng)):
        a, b = _pair(shapes, i, shapes)
        ca, cb = _pair(colours, i + int(rng.integers(len(colours))), colours)
        out.append((((ca, a), (cb, b)), relation))
    return out


def _make(world: World, category: str, drawn) -> Prompt:
    looks, relation = drawn
    text = world.describe([{"colour": c, "shape": s} for c, s in looks], relation)
    relations = ((0, relation, 1),) if relation else ()
    return Prompt(text, category, tuple(looks), relations)


def caption_prompts(ds, split: str = "test", n: int | None = None, seed: int = 0) -> list[Prompt]:
    """One held-out caption per image of `ds[split]` (the first `n` images, a seeded caption
    each) as prompts: for R-precision and Frechet distances against the same real images. The
    truth is what the caption states, as the world parses it; `image_id` names the image."""
    if split not in ds:
        raise KeyError(f"split {split!r} not in the dataset; it has {list(ds)}")
    rows = ds[split] if n is None else ds[split].select(range(min(n, len(ds[split]))))
    world = world_of(ds)
    rng = np.random.default_rng(seed)
    out = []
    for image_id, captions in zip(rows["id"], rows["captions"], strict=True):
        if not captions:
            raise ValueError(f"image {image_id!r} of split {split!r} has no caption")
        text = captions[int(rng.integers(len(captions)))]
        mentions, relations = world.parse(text)
        index = {id(m): i for i, m in enumerate(mentions)}
        stated = tuple(
            (index[id(r.first)], r.relation, index[id(r.second)])
            for r in relations
            if id(r.first) in index and id(r.second) in index
        )
        out.append(Prompt(text, CAPTION, tuple(m.look for m in mentions), stated, str(image_id)))
    return out
