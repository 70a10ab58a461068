"""Match pairs from captions: hard negatives change one word of a kind, easy ones borrow
another image's caption; the kinds are recorded; the synthetic world keeps its own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmlab.data import load_dataset, negatives

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
CAPTIONS = [
    "a red car parked left of two dogs",
    "a black cat on a blue sofa",
    "three people under an umbrella",
    "a white plate with an orange and a banana",
]


def _words(text):
    return negatives.tokens(text)


@pytest.mark.parametrize(
    ("kind", "original"),
    [("colour", {"red"}), ("count", {"two"}), ("spatial", {"left"}), ("object", {"car", "dogs"})],
)
def test_a_hard_negative_changes_one_word_of_its_kind(kind, original):
    swapper = negatives.build_swapper(CAPTIONS)
    caption = CAPTIONS[0]
    assert kind in swapper.kinds_in(caption)
    changed = swapper.swap(caption, kind, np.random.default_rng(0))
    before, after = _words(caption), _words(changed)
    diff = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(diff) >= 1 and all(a != b for a, b in diff)
    new = next(b for a, b in diff if a in original)
    if kind == "spatial":
        assert new == "right"
    elif kind == "object":  # nouns the captions use, number kept (dogs -> a plural)
        assert new in swapper.choices["object"] or new[:-1] in swapper.choices["object"]
    else:
        assert new in swapper.choices[kind] and new in {w for c in CAPTIONS for w in _words(c)}


def test_word_lists_follow_the_dataset_and_can_be_overridden():
    swapper = negatives.build_swapper(CAPTIONS)
    assert set(swapper.choices["colour"]) == {"red", "black", "blue", "white", "orange"}
    assert set(swapper.choices["count"]) == {"two", "three"}
    assert "orange" not in swapper.choices["object"]  # a colour word, not a swap target noun
    custom = negatives.NegativeWords(colour=("red", "green"), count=("two", "five"))
    swapped = negatives.build_swapper(CAPTIONS, custom)
    assert swapped.choices["colour"] == ("red", "green")  # one found: the whole list
    assert swapped.swap("a red car", "colour", np.random.default_rng(0)) == "a green car"
    # the article follows the new word
    assert (
        negatives.build_swapper(["an apple", "a banana"])
        .swap("an apple on a table", "object", np.random.default_rng(1))
        .startswith("a ")
    )


def test_match_columns_on_real_photos_are_deterministic_and_record_the_kind():
    ds = load_dataset(PHOTOS / "images")
    first = negatives.add_match_columns(ds, seed=0)
    again = negatives.add_match_columns(ds, seed=0)
    for split in first:
        assert first[split]["match_caption"] == again[split]["match_caption"]
    train = first["train"]
    kinds = Counter(train["match_kind"])
    assert set(kinds) <= {"positive", negatives.EASY, *negatives.HARD_KINDS}
    for caption, label, kind, own in zip(
        train["match_caption"],
        train["match_label"],
        train["match_kind"],
        train["captions"],
        strict=True,
    ):
        own = {negatives.normalise(c) for c in own}
        assert (label == 1) == (kind == "positive")
        assert (caption in own) == (kind == "positive")
    extra = negatives.more_match_pairs(first["train"], 4)
    assert len(extra) == len(train) and all(len(p) == 4 for p in extra)
    assert {k for pairs in extra for _, _, k in pairs} >= {"positive", negatives.EASY, "colour"}


def test_match_task_on_a_caption_dataset_without_match_columns():
    from mmlab.fusion import inputs

    ds = load_dataset(PHOTOS / "dataset_photos.json")
    assert "match_label" not in ds["train"].column_names
    data = inputs.build(
        ds,
        "match",
        {"image": "small_cnn:image_size=32", "text": "tfidf"},
        device="cpu",
        extra_pairs=2,
    )
    train = data.split("pooled", "train")
    assert len(train.labels) == 3 * len(ds["train"])
    assert set(train.groups) >= {"positive", negatives.EASY}
    assert data.class_names == ["0", "1"]
