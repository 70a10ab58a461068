"""The attribute oracle: the best any model could do when captions leave scenes ambiguous.

A caption names objects (colour, shape, sometimes size) and sometimes one relation; a scene
with one object has no stated place. Several test scenes can fit a caption exactly (two single
red circles), and no model can tell them apart from the text. The oracle knows every scene's
objects, keeps the scenes a caption is true of, and ranks them in random order: its recall is
the ceiling against which a model's is read. Scenes and their truth come from the dataset's
world (`mmlab.data.world_of`): only a world that knows its scenes has an oracle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmlab.data.world import synthetic_world
from mmlab.retrieval.metrics import both_directions


def fits(caption: str, scene: Sequence[Mapping], world=None) -> bool:
    """True when `caption` is true of `scene` (objects with colour, shape, size, x, y): it names
    exactly the scene's objects, with the right sizes where stated and the relations it states.
    `world`: whose truth judges it (default: the synthetic world's)."""
    return (world or synthetic_world()).fits(caption, scene)


def oracle_scores(
    captions: Sequence[str],
    caption_rows,
    scenes: Sequence,
    draws: int = 20,
    seed: int = 0,
    names: tuple[str, str] = ("text", "image"),
    world=None,
) -> tuple[dict[str, float], np.ndarray]:
    """The oracle's scores (mean over `draws` random orders of the fitting scenes) and the fit
    matrix; `own_fits` is the share of captions the parser finds true of their own scene.
    `world` (default: the synthetic one) judges which scenes a caption is true of."""
    raw = (world or synthetic_world()).fit_matrix(captions, scenes)
    fitting = raw.copy()
    fitting[np.arange(len(captions)), np.asarray(caption_rows)] = True
    rng = np.random.default_rng(seed)
    runs = [
        both_directions(
            fitting + 0.5 * rng.random(fitting.shape), caption_rows, np.arange(len(scenes)), names
        )
        for _ in range(draws)
    ]
    scores = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    scores["own_fits"] = float(raw[np.arange(len(captions)), np.asarray(caption_rows)].mean())
    scores["fitting_scenes_mean"] = float(fitting.sum(1).mean())
    return scores, fitting
