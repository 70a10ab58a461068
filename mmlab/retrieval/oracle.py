"""The attribute oracle: the best any model could do when captions leave scenes ambiguous.

A caption names objects (colour, shape, sometimes size) and sometimes one relation; a scene
with one object has no stated place. Several test scenes can fit a caption exactly (two single
red circles), and no model can tell them apart from the text. The oracle knows every scene's
objects, keeps the scenes a caption is true of, and ranks them in random order: its recall is
the ceiling against which a model's is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from mmlab.retrieval.metrics import both_directions


def fits(caption: str, scene: Sequence[Mapping]) -> bool:
    """True when `caption` is true of `scene` (objects with colour, shape, size, x, y): it names
    exactly the scene's objects, with the right sizes where stated and the relations it states."""
    from mmlab.data.synthetic import relation

    mentions, relations = _parsed(caption)
    looks = {(o["colour"], o["shape"]): o for o in scene}
    if {(m.colour, m.shape) for m in mentions} != set(looks) or len(mentions) != len(scene):
        return False
    if any(m.size not in (None, looks[(m.colour, m.shape)]["size"]) for m in mentions):
        return False
    return all(
        relation(looks[(r.first.colour, r.first.shape)], looks[(r.second.colour, r.second.shape)])
        == r.relation
        for r in relations
    )


@lru_cache(maxsize=8192)
def _parsed(caption: str):
    """Each caption is parsed once, however many scenes it is checked against."""
    from mmlab.metrics import parse_caption

    return parse_caption(caption)


def oracle_scores(
    captions: Sequence[str],
    caption_rows,
    scenes: Sequence,
    draws: int = 20,
    seed: int = 0,
    names: tuple[str, str] = ("text", "image"),
) -> tuple[dict[str, float], np.ndarray]:
    """The oracle's scores (mean over `draws` random orders of the fitting scenes) and the fit
    matrix; `own_fits` is the share of captions the parser finds true of their own scene."""
    by_looks: dict[frozenset, list[int]] = {}  # only scenes with the named objects can fit
    for j, scene in enumerate(scenes):
        by_looks.setdefault(frozenset((o["colour"], o["shape"]) for o in scene), []).append(j)
    raw = np.zeros((len(captions), len(scenes)), dtype=bool)
    for i, caption in enumerate(captions):
        looks = frozenset((m.colour, m.shape) for m in _parsed(caption)[0])
        for j in by_looks.get(looks, []):
            raw[i, j] = fits(caption, scenes[j])
    fitting = raw.copy()
    fitting[np.arange(len(captions)), np.asarray(caption_rows)] = True
    rng = np.random.default_rng(seed)
    runs = [
        both_directions(fitting + 0.5 * rng.random(fitting.shape), caption_rows,
                        np.arange(len(scenes)), names)
        for _ in range(draws)
    ]  # fmt: skip
    scores = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    scores["own_fits"] = float(raw[np.arange(len(captions)), np.asarray(caption_rows)].mean())
    scores["fitting_scenes_mean"] = float(fitting.sum(1).mean())
    return scores, fitting
