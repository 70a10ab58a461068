"""The comparison notebook 06 makes: each family's images for the prompt suite at each sampler
and guidance scale, scored by the attribute checker, timed per image; and a scorer for the
training loop that measures single-object faithfulness by epoch (against CPU minutes).

    rows = sweep(generator, checker, prompts, guidance=(0, 1, 3, 5), samplers=[("ddim", 50)])
    config = GenTrainConfig(evaluate=epoch_scorer(checker, single_prompts), evaluate_every=2)"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from mmlab.generation.base import Generator
from mmlab.generation.faithfulness import category_table, score_prompts


@dataclass(frozen=True)
class Setting:
    """One way to sample: `sampler` ("ddim", "ddpm"; "top_k" for the transformer), `steps`,
    the guidance scale `w` and the prompts it draws, per category (0: every prompt)."""

    sampler: str
    steps: int
    guidance: float
    per_category: int = 0

    @property
    def label(self) -> str:
        return f"{self.sampler}{self.steps} w={self.guidance:g}"

    def prompts(self, prompts: list) -> list:
        """The first `per_category` of `prompts` in each category, in their order."""
        if not self.per_category:
            return list(prompts)
        seen: dict[str, int] = {}
        kept = []
        for prompt in prompts:
            seen[prompt.category] = seen.get(prompt.category, 0) + 1
            if seen[prompt.category] <= self.per_category:
                kept.append(prompt)
        return kept


def settings(
    generator: Generator,
    guidance: Sequence[float],
    samplers,
    sampler_guidance: float = 3.0,
    sampler_prompts: int = 0,
) -> list[Setting]:
    """The settings to sweep: the first sampler at every `w` (the transformer: top-k, its one
    pass), then each further sampler (diffusion's other step counts) at `sampler_guidance`
    alone, on `sampler_prompts` prompts per category (0: all). A sampler sweep at one `w` keeps
    DDPM's 1000 steps, 40 times DDIM 25's, from multiplying by the guidance sweep."""
    if generator.family != "diffusion":
        samplers = [("top_k", generator.default_steps)]
    if not samplers:
        raise ValueError(
            "samplers is empty: name at least one (sampler, steps), e.g. [['ddim', 25]]"
        )
    if sampler_prompts < 0:
        raise ValueError(f"sampler_prompts must be 0 (every prompt) or more, got {sampler_prompts}")
    (first, first_steps), *further = samplers
    swept = [Setting(first, int(first_steps), float(w)) for w in guidance]
    return swept + [
        Setting(s, int(n), float(sampler_guidance), int(sampler_prompts)) for s, n in further
    ]


def draw(generator: Generator, texts: list[str], setting: Setting, seed: int = 0):
    """(uint8 images, CPU seconds per image) of `texts` at `setting`."""
    started = time.process_time()
    if setting.sampler in ("ddim", "ddpm"):
        generator.sampler = setting.sampler
    images = generator.generate(texts, guidance=setting.guidance, steps=setting.steps, seed=seed)
    return images, (time.process_time() - started) / max(len(texts), 1)


def score(checker, images, prompts) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-prompt verdicts, category table) of `images`; without a checker (data whose scenes
    are unknown), two empty tables."""
    if checker is None:
        return pd.DataFrame(), pd.DataFrame(columns=["category", "measure", "accuracy", "n"])
    per_prompt = score_prompts(prompts, checker.read(images))
    return per_prompt, category_table(per_prompt)


def metrics_of(table: pd.DataFrame) -> dict[str, float]:
    """A category table as flat metric names: `single_colour`, `counting_count_right`, ..."""
    out = {}
    for row in table.itertuples():
        name = f"{row.category}_{row.measure}".replace(",", "").replace(" ", "_")
        out[name] = float(row.accuracy)
    return out


def epoch_scorer(checker, prompts, guidance: float = 3.0, steps: int = 25, seed: int = 0):
    """`GenTrainConfig.evaluate`: the checker's accuracy on `prompts` (single-object ones) at
    guidance `guidance`, as `check_*` metrics of the epoch."""
    texts = [p.text for p in prompts]

    def evaluate(generator: Generator, epoch: int) -> dict[str, float]:
        sampler = getattr(generator, "sampler", None)
        images = generator.generate(texts, guidance=guidance, steps=steps, seed=seed)
        if sampler is not None:
            generator.sampler = sampler
        table = score(checker, images, prompts)[1]
        return {f"check_{k}": v for k, v in metrics_of(table).items()}

    return evaluate


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per family: its best setting's faithfulness (mean of categories), single-object
    colour and shape there, training CPU minutes and faithfulness per CPU minute."""
    best = rows.loc[rows.groupby("family")["overall_mean_of_categories"].idxmax()]
    keep = ["family", "setting", "overall_mean_of_categories", "single_colour", "single_shape"]
    keep += ["cpu_seconds_per_image", "train_cpu_minutes"]
    out = best[[c for c in keep if c in best.columns]].copy()
    out["faithfulness_per_cpu_minute"] = out["overall_mean_of_categories"] / out[
        "train_cpu_minutes"
    ].clip(lower=1e-9)
    return out.reset_index(drop=True)


def evaluation_setup(ds, per_category: int, checker_config, seed: int = 0):
    """(prompts, checker, note) for scoring: the prompt suite and a checker trained on `ds`
    where its scenes are known (the embedded world); on data known only through captions
    (photos), held-out captions as prompts, no checker and a note saying the scores are absent."""
    from mmlab.data import SceneTruthUnknown
    from mmlab.generation.checker import checker_for
    from mmlab.generation.prompts import caption_prompts, prompt_suite

    try:
        prompts = prompt_suite(ds, per_category=per_category, seed=seed)
    except SceneTruthUnknown as error:
        note = (
            f"no faithfulness scores on this data: {error}. The samples below are drawn from "
            f"held-out captions; on so few real photos they, and the losses, may mean little."
        )
        return caption_prompts(ds, "test", n=per_category, seed=seed), None, note
    return prompts, checker_for(ds, checker_config), ""
