"""Zero-shot classification by prompts: an image takes the class whose sentence ("a photo of a
red object") is nearest. On multi-object scenes a class present in the scene counts as right."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# attribute -> prompt template; classes come from the dataset
PROMPTS = {
    "colour": "a photo of a {} object",
    "shape": "a photo of a {}",
    "size": "a photo of a {} object",
    "label": "a photo of a {}",
}


def attribute_truth(ds_split) -> dict[str, tuple[list[str], list[set[str]]]]:
    """attribute -> (classes, the set of true classes per row), as the split's world knows
    them: the scene objects of the embedded data, else a `label` column; {} when neither."""
    from mmlab.data import world_of

    return world_of(ds_split).attribute_truth(ds_split)


def prompts(attribute: str, classes: Sequence[str]) -> list[str]:
    template = PROMPTS.get(attribute, "a photo of a {}")
    return [template.format(c) for c in classes]


def classify(
    item_vectors: np.ndarray,
    prompt_vectors: np.ndarray,
    classes: Sequence[str],
    truth: Sequence[set[str]],
) -> dict[str, float]:
    """Accuracy of the nearest prompt's class against each item's true set, and uniform chance."""
    sim = np.asarray(item_vectors) @ np.asarray(prompt_vectors).T
    predicted = [classes[i] for i in sim.argmax(1)]
    accuracy = float(np.mean([p in t for p, t in zip(predicted, truth, strict=True)]))
    chance = float(np.mean([len(t & set(classes)) / len(classes) for t in truth]))
    return {"accuracy": accuracy, "chance": chance}
