"""Zero-shot classification by prompts: each class becomes a sentence ("a photo of a red
object"), and an image takes the class whose sentence it is most similar to in the shared space.

On the embedded scenes (several objects each) a prediction is right when the scene has an
object with that value; chance is the share of classes present, averaged over images.
"""

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
    """attribute -> (classes, the set of true classes per row), from the scene objects of the
    embedded data or a `label` column; {} when the split has neither."""
    out = {}
    columns = ds_split.column_names
    if "objects" in columns:
        scenes = ds_split["objects"]
        for attribute in ("colour", "shape", "size"):
            truth = [{o[attribute] for o in scene} for scene in scenes]
            out[attribute] = (sorted(set().union(*truth)), truth)
    elif "label" in columns:
        labels = [str(v) for v in ds_split["label"]]
        out["label"] = (sorted(set(labels)), [{v} for v in labels])
    return out


def prompts(attribute: str, classes: Sequence[str]) -> list[str]:
    template = PROMPTS.get(attribute, "a photo of a {}")
    return [template.format(c) for c in classes]


def classify(
    item_vectors: np.ndarray,
    prompt_vectors: np.ndarray,
    classes: Sequence[str],
    truth: Sequence[set[str]],
) -> dict[str, float]:
    """Accuracy of the most similar prompt's class against the true set of each item, with the
    chance level of a uniform guess."""
    sim = np.asarray(item_vectors) @ np.asarray(prompt_vectors).T
    predicted = [classes[i] for i in sim.argmax(1)]
    accuracy = float(np.mean([p in t for p, t in zip(predicted, truth, strict=True)]))
    chance = float(np.mean([len(t & set(classes)) / len(classes) for t in truth]))
    return {"accuracy": accuracy, "chance": chance}
