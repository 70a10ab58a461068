"""Lexicons and grounded metrics beyond the synthetic world: COCO categories with CHAIR's
synonyms and plurals, ground truth from COCO instances or from the references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from mmlab import metrics
from mmlab.data import lexicons, load_dataset, synthetic

COCO_IDS = {"person": 1, "bicycle": 2, "car": 3, "cat": 17, "dog": 18, "cup": 47}
IMAGES = {  # id: (instance categories, reference captions)
    1: (["dog", "person"], ["a dog next to a man", "a man and his dog", "a person with a pet"]),
    2: (["cat", "cup"], ["a cat beside a cup", "a kitten and a mug", "a cat near a cup"]),
    3: (["person", "bicycle", "car"], ["a woman riding a bike", "a cyclist passing a car"]),
    4: (["cat"], ["a cat asleep", "a small grey cat"]),  # not captioned: four images split 2/1/1
}
PREDICTIONS = {
    "1": "a puppy and two men on a couch",  # synonym (dog), plural (person), couch not there
    "2": "two cats next to an orange cup",  # plural; "orange" before a noun is a colour
    "3": "a woman riding bikes past a bus",  # synonym (person), plural (bicycle), no bus
}


def _coco(root: Path, with_instances: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    images = []
    for i in IMAGES:
        Image.new("RGB", (16, 16), (60 * i, 90, 120)).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
    captions = [
        {"id": 10 * i + j, "image_id": i, "caption": c}
        for i, (_, refs) in IMAGES.items()
        for j, c in enumerate(refs)
    ]
    ann = root / "annotations"
    ann.mkdir()
    (ann / "captions_images.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    if with_instances:
        instances = [
            {"id": 10 * i + j, "image_id": i, "category_id": COCO_IDS[c]}
            for i, (cats, _) in IMAGES.items()
            for j, c in enumerate(cats)
        ]
        categories = [{"id": k, "name": n} for n, k in COCO_IDS.items()]
        data = {"images": images, "annotations": instances, "categories": categories}
        (ann / "instances_images.json").write_text(json.dumps(data))
    return ann / "captions_images.json"


def _all_rows(ds):
    """Ground truth over every split (one COCO file: the loader splits it)."""
    lexicon = lexicons.for_dataset(ds)
    truth = {}
    for split in ds.values():
        truth |= lexicons.ground_truth(split, lexicon)
    return lexicon, truth


def test_coco_lexicon_knows_synonyms_plurals_and_colours():
    coco = lexicons.get("coco")
    assert len(lexicons.COCO_SYNONYMS) == 80
    assert coco.objects_in("two puppies and a kitten") == ["dog", "cat"]
    assert coco.objects_in("women riding motor bikes") == ["person", "motorcycle"]
    assert coco.objects_in("an orange suit") == []  # a colour here
    assert coco.objects_in("an orange on a plate") == ["orange"]  # the fruit
    assert coco.objects_in("a teddy bear and hot dogs") == ["teddy bear", "hot dog"]
    with pytest.raises(KeyError, match="valid: synthetic, coco"):
        lexicons.get("imagenet")


def test_grounded_metrics_on_coco_instances_match_a_hand_computation(tmp_path):
    ds = load_dataset(_coco(tmp_path / "coco"))
    lexicon, truth = _all_rows(ds)
    assert lexicon.name == "coco"
    assert truth == {
        "1": ["dog", "person"],
        "2": ["cat", "cup"],
        "3": ["bicycle", "car", "person"],
        "4": ["cat"],
    }
    scores, table = metrics.grounded_scores(PREDICTIONS, truth, lexicon, per_image=True)
    # By hand. 1: names dog (puppy), person (men), couch -> 3 named, couch hallucinated, 2 of 2
    # found. 2: cat (cats), cup -> 2 named, none hallucinated, 2 of 2 found. 3: person (woman),
    # bicycle (bikes), bus -> 3 named, bus hallucinated, 2 of 3 found.
    assert table["mentions"].tolist() == [3, 2, 3]
    assert table["hallucinated"].tolist() == [1, 0, 1]
    assert table["named_objects"].tolist() == [2, 2, 2]
    assert scores["chair_i"] == pytest.approx(2 / 8)
    assert scores["object_precision"] == pytest.approx(6 / 8)
    assert scores["chair_s"] == pytest.approx(2 / 3)
    assert scores["object_recall"] == pytest.approx(6 / 7)
    assert math.isnan(scores["colour_error"]) and math.isnan(scores["relation_error"])


def test_without_instances_the_references_give_the_objects(tmp_path):
    ds = load_dataset(_coco(tmp_path / "coco", with_instances=False))
    assert "categories" not in ds["train"].column_names
    _, truth = _all_rows(ds)
    # "pet" and "mug" are no COCO words; "cyclist" is not in CHAIR's list either
    assert truth == {
        "1": ["dog", "person"],
        "2": ["cat", "cup"],
        "3": ["bicycle", "car", "person"],
        "4": ["cat"],
    }
    scores = metrics.grounded_scores(PREDICTIONS, truth, lexicons.get("coco"))
    assert scores["chair_i"] == pytest.approx(2 / 8)


def test_synthetic_lexicon_is_the_generators_table(tiny_synthetic):
    lexicon = lexicons.get("synthetic")
    assert lexicon.phrases == synthetic.LEXICON
    ds = load_dataset(tiny_synthetic)
    assert lexicons.for_dataset(ds) is lexicon
    truth = lexicons.ground_truth(ds["test"], lexicon)
    first = ds["test"][0]
    assert truth[first["id"]] == first["objects"]
    right = {first["id"]: first["captions"][0]}
    assert metrics.grounded_scores(right, truth, lexicon) == metrics.grounded_scores(right, truth)


def test_evaluate_sets_takes_a_lexicon(tmp_path):
    references = {k: IMAGES[int(k)][1] for k in PREDICTIONS}
    truth = {k: IMAGES[int(k)][0] for k in PREDICTIONS}
    report = metrics.evaluate_sets(
        references, {"model": PREDICTIONS}, truth, ("bleu",), "python", lexicon=lexicons.get("coco")
    )
    assert report.table.loc["model", "chair_i"] == pytest.approx(2 / 8)
    assert report.table.loc["human", "object_precision"] <= 1.0
