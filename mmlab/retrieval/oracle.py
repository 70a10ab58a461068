"""The attribute oracle: the best any model could do when captions leave scenes ambiguous.
Several test scenes can fit a caption exactly (two single red circles). The oracle keeps the
scenes a caption is true of and ranks them randomly: its recall is the ceiling for a model's.
Only a world that knows its scenes (`mmlab.data.world_of`) has an oracle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmlab.data.world import synthetic_world
from mmlab.retrieval.metrics import both_directions


def fits(caption: str, scene: Sequence[Mapping], world=None) -> bool:
    """Whether `caption` names exactly `scene`'s objects, sizes and relations, as `world` judges."""
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
    """The oracle's scores (mean over `draws` random orders) and the fit matrix; `own_fits`: the
    share of captions true of their own scene; `world` judges (default: synthetic)."""
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
