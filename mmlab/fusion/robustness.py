"""Robustness as MultiBench measures it (Liang et al. 2021): every pooled method, trained on clean
inputs, is tested with one modality (or all) made imperfect at levels 0 to 1.

Imperfections: `gaussian` noise on a modality's features (standard deviation `level` times the
train split's per-feature spread) and `dropout` of feature entries (each set to 0 with
probability `level`), on each modality alone and on all at once; and, on the raw image before
its encoder, MultiBench's visual corruptions that apply to these scenes: `salt_pepper` (a share
`level` of pixels turned black or white), `pixel_noise` (Gaussian noise of standard deviation
`level` of the pixel range), `contrast` (reduced by `level`), `grayscale` (blended towards grey
by `level`) and `blur` (a Gaussian blur of radius 4 `level` pixels).

A performance-imperfection curve is the test accuracy at each level. Relative robustness is the
area under it (levels span [0, 1]); effective robustness is the area between it and the curve of
late fusion shifted to the method's clean accuracy, so a method that starts higher is not
credited for that alone: above 0, it loses less than late fusion would from the same start."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance, ImageFilter

from mmlab.fusion.train import Split, evaluate

LEVELS = tuple(round(0.1 * i, 1) for i in range(11))
FEATURE_KINDS = ("gaussian", "dropout")
IMAGE_KINDS = ("salt_pepper", "pixel_noise", "contrast", "grayscale", "blur")
KINDS = FEATURE_KINDS + IMAGE_KINDS
ALL = "all"  # the feature imperfection applied to every modality at once
BASELINE = "late"  # effective robustness is measured against late fusion


@dataclass
class Imperfections:
    """What the robustness test feeds a trained pooled model besides its clean test split."""

    kinds: tuple[str, ...]
    scales: dict[str, torch.Tensor]  # modality -> the train split's per-feature std
    images: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)  # test features
    levels: tuple[float, ...] = LEVELS
    seed: int = 0

    def share_memory_(self) -> Imperfections:
        for x in (*self.scales.values(), *self.images.values()):
            x.share_memory_()
        return self


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(
            f"robustness: unknown imperfections {unknown}; valid: feature noise {FEATURE_KINDS}, "
            f"raw-image corruptions {IMAGE_KINDS}"
        )
    return tuple(kinds)


def corrupt_image(image: Image.Image, kind: str, level: float, seed: int = 0) -> Image.Image:
    """`image` under one of `IMAGE_KINDS` at `level` in [0, 1]; seeded, so a test is repeatable."""
    image = image.convert("RGB")
    if level == 0:
        return image
    if kind == "contrast":
        return ImageEnhance.Contrast(image).enhance(1 - level)
    if kind == "grayscale":
        return Image.blend(image, image.convert("L").convert("RGB"), level)
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(4 * level))
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float32) / 255
    if kind == "pixel_noise":
        pixels = pixels + rng.normal(0, level, pixels.shape)
    elif kind == "salt_pepper":
        hit = rng.random(pixels.shape[:2]) < level
        pixels[hit] = rng.integers(0, 2, (int(hit.sum()), 1))  # black or white, all channels
    else:
        raise ValueError(f"unknown image corruption {kind!r}; valid: {IMAGE_KINDS}")
    return Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8))


def prepare(
    data,
    ds,
    kinds: Sequence[str],
    levels: Sequence[float] = LEVELS,
    device: str = "cpu",
    seed: int = 0,
) -> Imperfections | None:
    """The imperfections of `kinds` for `data`'s pooled inputs (None when `kinds` is empty):
    feature spreads from the train split, and the test images under each raw-image corruption
    and level encoded by the image's pooled encoder (`data.encoders['pooled']['image']`)."""
    kinds = check_kinds(kinds)
    if not kinds:
        return None
    if "pooled" not in data.splits:
        raise ValueError("robustness tests pooled methods; give notebook 02 pooled `encoders`")
    train = data.split("pooled", "train")
    scales = {m: x.float().std(0) for m, x in train.inputs.items()}
    imperfections = Imperfections(kinds, scales, levels=tuple(levels), seed=seed)
    image_kinds = [k for k in kinds if k in IMAGE_KINDS]
    if image_kinds:
        if "image" not in data.encoders.get("pooled", {}):
            raise ValueError(
                f"robustness {image_kinds} corrupt the raw image, but `modalities` "
                f"{data.modalities} has no pooled image"
            )
        from mmlab import features
        from mmlab.features.registry import parse_encoder

        name, options = parse_encoder(data.encoders["pooled"]["image"])
        extractor = features.create("image", name, device=device, **options)
        originals = list(ds["test"]["image"])
        for kind in image_kinds:
            for level in levels[1:] if levels and levels[0] == 0 else levels:
                images = [
                    corrupt_image(im, kind, level, seed + i) for i, im in enumerate(originals)
                ]
                imperfections.images[kind, level] = extractor.extract(images).float()
    return imperfections


def _feature_noise(x: torch.Tensor, kind: str, level: float, scale, generator) -> torch.Tensor:
    x = x.float()
    if kind == "gaussian":
        return x + level * scale * torch.randn(x.shape, generator=generator)
    keep = torch.rand(x.shape, generator=generator) >= level
    return x * keep


def curves(model, test: Split, imperfections: Imperfections, device: str = "cpu") -> pd.DataFrame:
    """Test accuracy of a trained pooled `model` at every level of every imperfection: rows
    (modality, kind, level, accuracy); `modality` is `all` for noise on every modality at once."""
    rows = []

    def score(modality, kind, level, inputs):
        accuracy = evaluate(model, Split(inputs, test.labels), device)["accuracy"]
        rows.append(dict(modality=modality, kind=kind, level=level, accuracy=accuracy))

    for kind in imperfections.kinds:
        if kind in FEATURE_KINDS:
            for modality in [*test.inputs, ALL] if len(test.inputs) > 1 else list(test.inputs):
                generator = torch.Generator().manual_seed(imperfections.seed)
                for level in imperfections.levels:
                    inputs = {
                        m: _feature_noise(x, kind, level, imperfections.scales[m], generator)
                        if modality in (m, ALL) and level
                        else x
                        for m, x in test.inputs.items()
                    }
                    score(modality, kind, level, inputs)
        elif "image" in test.inputs:
            for level in imperfections.levels:
                x = imperfections.images.get((kind, level), test.inputs["image"])
                score("image", kind, level, {**test.inputs, "image": x})
    return pd.DataFrame(rows)


def area(levels: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under a curve over `levels`, divided by their span (1 for 0..1)."""
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    span = levels[-1] - levels[0]
    return float(np.trapezoid(values, levels) / span) if span else float(values[0])


def summarize(table: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per method, modality and kind (`table`: rows of `curves` with `method`, `seed`): clean
    accuracy, accuracy at the highest level, relative robustness (area) and effective robustness
    against `baseline` (NaN where the baseline was not run), each the mean over seeds."""
    if table.empty:
        return pd.DataFrame()
    keys = ["method", "modality", "kind"]
    mean = table.groupby([*keys, "level"], sort=False)["accuracy"].mean().reset_index()
    base = mean[mean["method"] == baseline].set_index(["modality", "kind", "level"])
    base = base["accuracy"].sort_index()
    rows = []
    for (method, modality, kind), curve in mean.groupby(keys, sort=False):
        curve = curve.sort_values("level")
        levels, acc = curve["level"].to_numpy(), curve["accuracy"].to_numpy()
        effective = np.nan
        if baseline in set(mean["method"]):
            late = base.loc[modality, kind].reindex(levels).to_numpy()
            effective = area(levels, acc - (late + acc[0] - late[0]))
        rows.append(
            dict(
                method=method,
                modality=modality,
                kind=kind,
                clean=acc[0],
                worst=acc[-1],
                relative_robustness=area(levels, acc),
                effective_robustness=effective,
            )
        )
    return pd.DataFrame(rows)


def metrics(table: pd.DataFrame) -> dict[str, float]:
    """One run's curves as MLflow metrics: `relative_robustness/<kind>/<modality>` (the area)."""
    return {
        f"relative_robustness/{kind}/{modality}": area(c["level"], c["accuracy"])
        for (kind, modality), c in table.groupby(["kind", "modality"], sort=False)
    }
