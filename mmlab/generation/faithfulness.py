"""Faithfulness of generated images, measured in-domain: what the attribute checker reads against
what the prompt asks for (GenEval's and T2I-CompBench's categories), R-precision (AttnGAN, Xu et
al. 2018) and Frechet distance and KID on the checker's features, beside their real-vs-real floor.

    readings = checker.read(images)                      # mmlab.generation.checker
    per_prompt = score_prompts(prompts, readings)        # a row per prompt: what was right
    table = category_table(per_prompt)                   # category, measure, accuracy, n
    per_prompt, table = faithfulness(checker, images, prompts)   # both in one call
    r_precision(image_vectors, prompt_vectors, pool_vectors, prompts=texts, pool=pool_texts)
    r_precision_encoded(searcher.encode, images, prompts, pool)   # the same, embedding here
    frechet_table(checker, generated, real)              # FID / KID rows, generated and floor
    reconstruction_ceiling(checker, generator, ds["test"])   # the checker on reconstructions

`images`: what the checker takes (float [N, 3, H, W] in [0, 1], uint8, or PIL), image i made
from prompt i. Tables are pandas DataFrames for `mmlab.tracking.log_table`.

What counts as right (`judge`), on the objects the checker reads: `shape_ok` (each named shape
is there), `colour_ok` (each named colour is there), `objects_ok` (each named (colour, shape)
is one object: the binding), `count_ok` (exactly as many objects as named), `relation_ok` (the
named objects are there and each stated relation holds between their centres, by the world's
rule; NaN where none is stated). A prompt's `correct` is its category's measure: single and
colour: `objects_ok`; two_objects: `shape_ok`; counting: `count_ok`; position: `relation_ok`;
colour_binding: `objects_ok`; a held-out caption: all of count, objects and relations.

R-precision takes embeddings (or, in `r_precision_scored`, a scoring callable, or in
`r_precision_encoded` an encoder), so this study needs no retrieval import: notebook 06 loads
the retrieval model a retrieval run logged with `mmlab.retrieval.saving.load_searcher(uri)`
(a run id, `runs:/...`, `models:/mmlab-searcher@champion`, `latest`) and passes
`searcher.encode` (`encode("image", pil_images)`, `encode("text", texts)`: unit vectors)."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2.functional import to_pil_image

from mmlab.core.extras import require
from mmlab.data import synthetic_world
from mmlab.generation.checker import AttributeChecker, reading_accuracy, split_pixels, to_unit
from mmlab.generation.prompts import CAPTION, Prompt

JUDGED = ("shape_ok", "colour_ok", "objects_ok", "count_ok", "relation_ok")
CORRECT_BY = {
    "single": "objects_ok",
    "colour": "objects_ok",
    "two_objects": "shape_ok",
    "counting": "count_ok",
    "position": "relation_ok",
    "colour_binding": "objects_ok",
}
# (category, measure, column): the rows of the category table, GenEval / T2I-CompBench style
MEASURES = (
    ("single", "shape", "shape_ok"),
    ("single", "colour", "colour_ok"),
    ("single", "both", "objects_ok"),
    ("two_objects", "both right", "shape_ok"),
    ("counting", "count right", "count_ok"),
    ("colour", "colour right", "objects_ok"),
    ("position", "relation right", "relation_ok"),
    ("colour_binding", "both bound", "objects_ok"),
    (CAPTION, "all right", "correct"),
)


def judge(prompt: Prompt, scene: Sequence[dict], world=None) -> dict[str, float]:
    """What of `prompt` holds in `scene` (objects {shape, colour, x, y}, as read or as true)."""
    world = world or synthetic_world()
    named_shapes = Counter(s for _, s in prompt.objects)
    named_colours = Counter(c for c, _ in prompt.objects)
    named_looks = Counter(prompt.objects)
    shapes = Counter(o["shape"] for o in scene)
    colours = Counter(o["colour"] for o in scene)
    looks: dict[tuple[str, str], dict] = {}
    for o in sorted(scene, key=lambda o: -o.get("score", 1.0)):  # the surest of a look
        looks.setdefault((o["colour"], o["shape"]), o)
    seen = Counter((o["colour"], o["shape"]) for o in scene)
    out = {
        "shape_ok": float(named_shapes <= shapes),
        "colour_ok": float(named_colours <= colours),
        "objects_ok": float(named_looks <= seen),
        "count_ok": float(len(scene) == prompt.count),
        "relation_ok": math.nan,
    }
    if prompt.relations:
        ok = True
        for i, relation, j in prompt.relations:
            a, b = looks.get(prompt.objects[i]), looks.get(prompt.objects[j])
            ok = ok and a is not None and b is not None and world.relation(a, b) == relation
        out["relation_ok"] = float(ok)
    if prompt.category == CAPTION:
        parts = [out["count_ok"], out["objects_ok"]]
        parts += [out["relation_ok"]] if prompt.relations else []
        out["correct"] = float(all(parts))
    else:
        out["correct"] = out[CORRECT_BY[prompt.category]]
    return out


def score_prompts(prompts: Sequence[Prompt], readings: Sequence[Sequence[dict]], world=None):
    """A row per prompt: its text, category, how many objects were named and read, what was
    read, and `judge`'s verdicts (1.0 / 0.0, NaN where not applicable)."""
    if len(prompts) != len(readings):
        raise ValueError(f"{len(prompts)} prompts but {len(readings)} readings: one image each")
    rows = []
    for i, (prompt, scene) in enumerate(zip(prompts, readings, strict=True)):
        read = ", ".join(f"{o['colour']} {o['shape']}" for o in scene)
        rows.append(
            {
                "image": i,
                "prompt": prompt.text,
                "category": prompt.category,
                "named": prompt.count,
                "read_count": len(scene),
                "read": read,
                **judge(prompt, scene, world),
            }
        )
    return pd.DataFrame(rows)


def category_table(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (category, measure) of the categories present, counting by number of named
    objects, and `overall`: the mean of the categories' `correct` (GenEval's overall score)."""
    rows = []
    for category, measure, column in MEASURES:
        part = per_prompt.loc[per_prompt["category"] == category, column].dropna()
        if len(part):
            rows.append((category, measure, float(part.mean()), len(part)))
        if category == "counting" and len(part):
            counting = per_prompt[per_prompt["category"] == "counting"]
            for n, group in counting.groupby("named"):
                rows.append(
                    (
                        category,
                        f"count right, {n} named",
                        float(group["count_ok"].mean()),
                        len(group),
                    )
                )
    suite = per_prompt[per_prompt["category"].isin(list(CORRECT_BY))]
    if len(suite):
        overall = suite.groupby("category")["correct"].mean()
        rows.append(("overall", "mean of categories", float(overall.mean()), len(suite)))
    return pd.DataFrame(rows, columns=["category", "measure", "accuracy", "n"])


def faithfulness(
    checker: AttributeChecker, images, prompts: Sequence[Prompt]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(`score_prompts`, `category_table`) of images made from `prompts`, read by `checker`."""
    per_prompt = score_prompts(prompts, checker.read(images))
    return per_prompt, category_table(per_prompt)


# ---------------------------------------------------------------------- the ceiling
def reconstruction_ceiling(checker: AttributeChecker, generator, split, rows: int = 0):
    """`reading_accuracy` (shape, colour, count, ...) of the checker on real images of `split`
    passed through `generator`'s autoencoder alone (`generator.reconstruct`): a prior over its
    latents or tokens draws at best what the decoder can, so this caps the generator's
    faithfulness, as the checker on the real images caps the reconstructions'. `rows`: the
    first N images (0: all)."""
    from mmlab.data import world_of

    world = world_of(split)
    if rows:
        split = split.select(range(min(rows, len(split))))
    real = split_pixels(split, generator.image_size).float() / 127.5 - 1.0
    reconstructed = ((generator.reconstruct(real) + 1) * 127.5).round().to(torch.uint8)
    return reading_accuracy(checker.read(reconstructed), world.scenes(split), world)


# ---------------------------------------------------------------------- R-precision
def _distractors(
    n: int, pool_size: int, same: np.ndarray, distractors: int, seed: int
) -> np.ndarray:
    """[n, distractors] pool indices drawn without replacement, never one marked in `same`."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, distractors), dtype=np.int64)
    for i in range(n):
        allowed = np.flatnonzero(~same[i])
        if len(allowed) < distractors:
            raise ValueError(
                f"R-precision ranks each prompt among {distractors} other captions, but image {i} "
                f"has only {len(allowed)} in the pool: pass more captions as the pool (e.g. the "
                f"test split's) or a smaller `distractors`"
            )
        out[i] = rng.choice(allowed, distractors, replace=False)
    return out


def _same_text(prompts, pool, n: int, pool_size: int, pool_is_prompts: bool) -> np.ndarray:
    """[n, pool] True where a pool caption cannot be a distractor of prompt i: itself, or the
    same words."""
    same = np.zeros((n, pool_size), dtype=bool)
    if pool_is_prompts:
        same[np.arange(n), np.arange(n)] = True
    if prompts is not None and pool is not None:
        key = [" ".join(str(getattr(t, "text", t)).lower().split()) for t in prompts]
        pool_key = np.array([" ".join(str(getattr(t, "text", t)).lower().split()) for t in pool])
        for i, k in enumerate(key):
            same[i] |= pool_key == k
    return same


def _unit(v) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(v), dtype=torch.float32), dim=1)


def r_precision(
    image_vectors,
    prompt_vectors,
    pool_vectors=None,
    *,
    prompts: Sequence | None = None,
    pool: Sequence | None = None,
    distractors: int = 99,
    seed: int = 0,
) -> float:
    """R@1 of AttnGAN's R-precision: for each image (row i of `image_vectors`, made from prompt
    i), the cosine similarity ranks its prompt's embedding against `distractors` captions drawn
    from `pool_vectors` (default: the other prompts); the share of images whose prompt ranks
    first (a tie is a miss). `prompts` and `pool` (texts or Prompts) keep a caption with the
    prompt's very words out of its distractors."""
    images, texts = _unit(image_vectors), _unit(prompt_vectors)
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} image vectors but {len(texts)} prompt vectors")
    pool_is_prompts = pool_vectors is None
    others = texts if pool_is_prompts else _unit(pool_vectors)
    pool = prompts if pool_is_prompts else pool
    same = _same_text(prompts, pool, len(texts), len(others), pool_is_prompts)
    drawn = torch.as_tensor(_distractors(len(texts), len(others), same, distractors, seed))
    true = (images * texts).sum(1)
    wrong = torch.einsum("nd,nkd->nk", images, others[drawn])
    return float((true[:, None] > wrong).all(1).float().mean())


def r_precision_scored(
    score: Callable[[int, list[str]], Sequence[float]],
    prompts: Sequence[str],
    pool: Sequence[str] | None = None,
    *,
    distractors: int = 99,
    seed: int = 0,
) -> float:
    """R-precision with a scoring callable: `score(i, texts)` scores image i against each text
    (higher: a better match); the first text is always image i's prompt."""
    prompts = [str(getattr(p, "text", p)) for p in prompts]
    pool_is_prompts = pool is None
    pool = prompts if pool_is_prompts else [str(getattr(p, "text", p)) for p in pool]
    same = _same_text(prompts, pool, len(prompts), len(pool), pool_is_prompts)
    drawn = _distractors(len(prompts), len(pool), same, distractors, seed)
    hits = []
    for i, prompt in enumerate(prompts):
        scores = np.asarray(score(i, [prompt, *(pool[j] for j in drawn[i])]), dtype=float)
        hits.append(bool((scores[0] > scores[1:]).all()))
    return float(np.mean(hits))


def r_precision_encoded(
    encode: Callable[[str, list], np.ndarray],
    images,
    prompts: Sequence,
    pool: Sequence | None = None,
    *,
    distractors: int = 99,
    seed: int = 0,
) -> float:
    """`r_precision` with an encoder: `encode("image", pil_images)` and `encode("text", texts)`
    give embeddings (a retrieval `Searcher.encode`, as `mmlab.retrieval.saving.load_searcher`
    loads it); `images` as the checker takes them, `prompts` and `pool` texts or Prompts."""
    texts = [str(getattr(p, "text", p)) for p in prompts]
    pool_texts = None if pool is None else [str(getattr(p, "text", p)) for p in pool]
    if isinstance(images, torch.Tensor):  # the encoder takes PIL images, as a user's query
        images = [to_pil_image(x) for x in (to_unit(images) * 255).round().to(torch.uint8)]
    pictures = list(images)
    return r_precision(
        encode("image", pictures),
        encode("text", texts),
        None if pool_texts is None else encode("text", pool_texts),
        prompts=texts,
        pool=pool_texts,
        distractors=distractors,
        seed=seed,
    )


# ---------------------------------------------------------------------- Frechet distance, KID
def frechet_scores(
    checker: AttributeChecker, images_a, images_b, *, subset_size: int | None = None
) -> dict[str, float]:
    """FID and KID (mean, std) between two image sets on the checker's features (torchmetrics
    with the checker as its `feature` module); `a` goes in as the "real" side. KID's subsets
    hold `subset_size` images (default: up to 100, at most the smaller set)."""
    require("torchmetrics", "Frechet distances on checker features")
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = to_unit(images_a), to_unit(images_b)
    if min(len(a), len(b)) < 2:
        raise ValueError(
            f"Frechet distances need at least 2 images a side, got {len(a)} and {len(b)}"
        )
    module = checker.feature_module()
    fid = FrechetInceptionDistance(feature=module, normalize=True)
    size = subset_size or min(100, len(a), len(b))
    with warnings.catch_warnings():  # it warns that it keeps every feature: a few hundred here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=module, normalize=True, subsets=10, subset_size=size)
    for metric in (fid, kid):
        for chunk in a.split(256):
            metric.update(chunk, real=True)
        for chunk in b.split(256):
            metric.update(chunk, real=False)
    kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "n_a": len(a),
        "n_b": len(b),
    }


def frechet_table(
    checker: AttributeChecker,
    generated,
    real,
    *,
    seed: int = 0,
    label: str = "generated vs real",
    subset_size: int | None = None,
) -> pd.DataFrame:
    """FID / KID of `generated` against half of the held-out `real` images, and the floor: the
    other half of `real` against the same half (two disjoint halves, seeded), in one table with
    each FID's ratio to the floor."""
    real = to_unit(real)
    if len(real) < 4:
        raise ValueError(f"the real-vs-real floor needs at least 4 real images, got {len(real)}")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(real)))
    half = len(real) // 2
    first, second = real[order[:half]], real[order[half : 2 * half]]
    rows = [
        {
            "comparison": label,
            **frechet_scores(checker, second, generated, subset_size=subset_size),
        },
        {
            "comparison": "real vs real (floor)",
            **frechet_scores(checker, second, first, subset_size=subset_size),
        },
    ]
    table = pd.DataFrame(rows)
    table["fid_over_floor"] = table["fid"] / table["fid"].iloc[-1]
    return table
