"""The label task's targets: balanced classes, and a composite that no half of the scene tells."""

from __future__ import annotations

from collections import Counter

import datasets
import numpy as np
import pytest

from mmlab.data import synthetic, targets


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Scenes as the generator draws them, in the dataset's row form (no files rendered)."""
    rows = []
    for i in range(n):
        scene = synthetic.sample_scene(np.random.default_rng([seed, i]))
        rows.append(
            {
                "objects": [o.as_dict() for o in scene.objects],
                "motion": scene.motion,
                "first_shape": scene.objects[0].shape,
                "first_colour": scene.objects[0].colour,
            }
        )
    return rows


@pytest.fixture(scope="module")
def scenes():
    return datasets.Dataset.from_list(_rows(4000))


def test_composite_target_is_balanced_and_no_half_of_the_scene_tells_it(scenes):
    answers = np.array(targets.values(scenes, "circle_xor_sideways")) == "yes"
    assert abs(answers.mean() - 0.5) < 0.03, answers.mean()
    circle = np.array([any(o["shape"] == "circle" for o in r) for r in scenes["objects"]])
    sideways = np.isin(scenes["motion"], ["left", "right"])
    assert 0.2 < circle.mean() < 0.8  # both halves vary
    # Knowing only the shapes (image, text, audio) leaves the answer a coin toss; knowing only
    # the motion (the video's time axis) leaves the best guess "no circle", right as often as
    # scenes lack one: the 0.70 bar of a unimodal baseline holds with room.
    for value in (True, False):
        assert abs(answers[circle == value].mean() - 0.5) < 0.03
    best_from_motion = max(circle.mean(), 1 - circle.mean())
    for value in (True, False):
        assert abs(answers[sideways == value].mean() - 0.5) <= best_from_motion - 0.5 + 0.03
    assert best_from_motion < 0.67
    assert np.array_equal(answers, circle == sideways)


def test_motion_and_first_object_targets_spread_over_their_classes(scenes):
    motion = Counter(targets.values(scenes, "motion"))
    assert set(motion) == set(synthetic.MOTIONS)
    assert all(abs(c / len(scenes) - 0.25) < 0.03 for c in motion.values()), motion
    shapes = Counter(targets.values(scenes, "first_shape"))
    colours = Counter(targets.values(scenes, "first_colour"))
    assert set(shapes) == set(synthetic.SHAPES) and set(colours) == set(synthetic.COLOURS)
    assert max(shapes.values()) / min(shapes.values()) < 1.3
    assert max(colours.values()) / min(colours.values()) < 1.3


def test_values_read_any_column_and_explain_what_a_target_needs():
    split = datasets.Dataset.from_dict({"id": ["a", "b"], "label": ["x", "y"]})
    assert targets.values(split, "label") == ["x", "y"]
    with pytest.raises(KeyError, match=r"needs columns \['objects', 'motion'\].*split 'test'"):
        targets.values(split, "circle_xor_sideways", "test")
    with pytest.raises(KeyError, match="registered targets: motion"):
        targets.values(split, "smell")
    assert targets.available() == list(targets.TARGETS)


def test_the_embedded_dataset_has_every_target(tiny_synthetic):
    from mmlab.data import load_dataset

    ds = load_dataset(str(tiny_synthetic))
    for name in targets.available():
        answers = targets.values(ds["train"], name)
        assert len(answers) == len(ds["train"])
    rows = ds["train"].select_columns(["objects", "motion"]).to_list()
    expected = [
        "yes"
        if any(o["shape"] == "circle" for o in r["objects"]) == (r["motion"] in ("left", "right"))
        else "no"
        for r in rows
    ]
    assert targets.values(ds["train"], "circle_xor_sideways") == expected
