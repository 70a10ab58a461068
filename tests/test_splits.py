"""Automatic splits: 80/10/10 by a seeded hash of the image ids, missing splits carved from
train, a split too small is an error naming it; notebook 01's choice of probe targets."""

from __future__ import annotations

import datasets
import pytest

from mmlab.data import splits


def _table(n: int, start: int = 0) -> datasets.Dataset:
    ids = [f"img{i}" for i in range(start, start + n)]
    return datasets.Dataset.from_dict({"id": ids, "captions": [[f"caption {i}"] for i in ids]})


def test_one_split_is_cut_80_10_10_deterministically_by_id():
    made, plan = splits.ensure_splits({"train": _table(50)}, seed=0)
    assert {s: len(d) for s, d in made.items()} == {"train": 40, "validation": 5, "test": 5}
    assert plan.made == ["train", "validation", "test"] and plan.describe().startswith(
        "auto 80/10/10"
    )
    ids = {s: set(d["id"]) for s, d in made.items()}
    assert set.union(*ids.values()) == {f"img{i}" for i in range(50)}
    assert not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    again, _ = splits.ensure_splits({"validation": _table(50)}, seed=0)  # the name does not matter
    assert {s: set(d["id"]) for s, d in again.items()} == ids
    other, _ = splits.ensure_splits({"train": _table(50)}, seed=1)
    assert set(other["test"]["id"]) != ids["test"]
    # adding images keeps the old ones where they were (mostly: the cut point moves a little)
    more, _ = splits.ensure_splits({"train": _table(60)}, seed=0)
    assert (
        len(ids["test"] & set(more["test"]["id"]) | ids["test"] & set(more["validation"]["id"]))
        >= 3
    )


def test_a_missing_held_out_split_is_carved_from_train():
    given = {"train": _table(40), "test": _table(10, start=100)}
    made, plan = splits.ensure_splits(given, seed=0)
    assert plan.made == ["validation"] and plan.given == ["train", "test"]
    assert {s: len(d) for s, d in made.items()} == {"train": 35, "test": 10, "validation": 5}
    assert made["test"]["id"] == given["test"]["id"]  # a given split is kept as it is
    with pytest.raises(splits.SplitError, match="no 'train' split"):
        splits.ensure_splits({"validation": _table(5), "test": _table(5, start=10)})


def test_a_split_too_small_names_the_split_and_its_size():
    with pytest.raises(splits.SplitError, match=r"split 'train' has 1 image\(s\).*at least 4"):
        splits.ensure_splits({"train": _table(3)})
    made, _ = splits.ensure_splits({"train": _table(4)})
    assert {s: len(d) for s, d in made.items()} == {"train": 2, "validation": 1, "test": 1}
    given = {"train": _table(1), "validation": _table(1, 5), "test": _table(1, 9)}
    assert splits.ensure_splits(given)[1].made == []  # the source's own splits are its choice


def test_probe_targets_follow_the_dataset():
    from mmlab.features import survey

    def table(**columns):
        n = len(next(iter(columns.values())))
        return datasets.Dataset.from_dict({"id": [str(i) for i in range(n)], **columns})

    ds = {
        "train": table(
            label=[0, 1, 0, 1],
            colour=["r", "g", "r", "b"],
            score=[0.1] * 4,
            name=["a", "b", "c", "d"],
        ),
        "test": table(label=[1, 0], colour=["r", "g"], score=[0.2, 0.3], name=["e", "f"]),
    }
    assert survey.attribute_columns(ds) == ["label", "colour"]  # "name" is an id, "score" a float
    assert survey.probe_targets(ds, ["colour"]) == (["colour"], "")
    targets, note = survey.probe_targets(ds, ["first_shape"])
    assert targets == ["label", "colour"] and "probing" in note
    bare = {s: table(captions=[["x"]] * len(d)) for s, d in ds.items()}
    targets, note = survey.probe_targets(bare, ["first_shape"])
    assert targets == [] and "probes skipped" in note
    assert survey.projection_split(bare) == "train"  # two test rows cannot be projected
    kept, note = survey.modalities_present(bare, {"text": ["tfidf"], "audio": ["mfcc"]})
    assert kept == {"text": ["tfidf"]} and "no audio column" in note
