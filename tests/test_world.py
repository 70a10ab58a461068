"""The world seam: `world_of(ds)` answers the synthetic world's scene truth for the embedded
data and only what captions say for a user's own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmlab.data import (
    CaptionsWorld,
    SceneTruthUnknown,
    SyntheticWorld,
    lexicons,
    load_dataset,
    negatives,
    synthetic,
    synthetic_world,
    world_of,
)

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
SCENE = [
    {"shape": "circle", "colour": "red", "size": "large", "x": 0.2, "y": 0.5},
    {"shape": "square", "colour": "blue", "size": "small", "x": 0.8, "y": 0.5},
]


@pytest.fixture(scope="module")
def ds(tiny_synthetic):
    return load_dataset(tiny_synthetic)


@pytest.fixture(scope="module")
def photos():
    return load_dataset(PHOTOS / "images")


def test_the_embedded_data_resolves_to_the_one_synthetic_world(ds):
    world = world_of(ds)
    assert isinstance(world, SyntheticWorld) and world is synthetic_world()
    assert world_of(ds["test"]) is world and world_of(dict(ds)) is world
    assert world_of(world) is world
    assert world.knows_scenes and world.lexicon is lexicons.get("synthetic")
    test = ds["test"]
    assert world.scenes(test) == test["objects"]
    assert world.ground_truth(test) == dict(zip(test["id"], test["objects"], strict=True))


def test_photos_resolve_to_a_captions_only_world(photos):
    world = world_of(photos)
    assert isinstance(world, CaptionsWorld) and not world.knows_scenes
    assert world.lexicon is lexicons.get("coco") is lexicons.for_dataset(photos)
    train = photos["train"]
    assert world.scenes(train) is None
    assert world.ground_truth(train) == lexicons.ground_truth(train, world.lexicon)


def test_the_embedded_data_without_its_scenes_is_captions_only(ds):
    bare = {s: ds[s].remove_columns(["objects"]) for s in ds}
    world = world_of(bare)
    assert isinstance(world, CaptionsWorld) and world.scenes(bare["test"]) is None


def test_the_synthetic_world_judges_captions_against_scenes():
    world = synthetic_world()
    assert world.relation(SCENE[0], SCENE[1]) == "left"
    assert world.fits("a large red circle left of a small blue square", SCENE)
    assert world.fits("a red circle and a blue square", SCENE)  # sizes and places unstated
    assert not world.fits("a red circle right of a blue square", SCENE)  # wrong relation
    assert not world.fits("a small red circle and a blue square", SCENE)  # wrong size
    assert not world.fits("a red circle", SCENE)  # an object left out
    lone = [{"shape": "circle", "colour": "red", "size": "small", "x": 0.5, "y": 0.5}]
    captions = ["a red circle", "a red circle left of a blue square", "a green circle"]
    matrix = world.fit_matrix(captions, [SCENE, lone])
    expected = [[world.fits(c, s) for s in (SCENE, lone)] for c in captions]
    assert matrix.dtype == bool and matrix.tolist() == expected == [
        [False, True],
        [True, False],
        [False, False],
    ]


def test_a_captions_only_world_says_what_it_cannot_know(photos):
    world = world_of(photos)
    for ask in (
        lambda: world.fits("a red circle", SCENE),
        lambda: world.relation(SCENE[0], SCENE[1]),
        lambda: world.fit_matrix(["a red circle"], [SCENE]),
        lambda: world.hard_negatives(photos["train"], 2),
    ):
        with pytest.raises(SceneTruthUnknown, match="captions-only world"):
            ask()
    assert issubclass(SceneTruthUnknown, ValueError)  # callers that caught ValueError still do


def test_synthetic_negatives_are_the_generators(ds):
    world, train = world_of(ds), ds["train"]
    records = train.select_columns(["id", "objects", "motion"]).to_list()
    assert world.can_pair(train)
    assert world.match_pairs(train, 3) == [synthetic.more_match_pairs(r, 3) for r in records]
    hard = world.hard_negatives(train, 2, seed=1)
    assert len(hard) == len(train) and all(0 < len(h) <= 2 for h in hard)
    for record, texts in zip(records, hard, strict=True):
        drawn = synthetic.more_match_pairs(record, 8, seed=1)
        assert texts == [t for t, label, _ in drawn if label == 0][:2]


def test_captions_only_negatives_come_from_the_captions(photos):
    world, train = world_of(photos), photos["train"]
    assert world.can_pair(train)
    assert world.match_pairs(train, 2, seed=3) == negatives.more_match_pairs(train, 2, seed=3)
    bare = train.remove_columns(["captions"])
    assert not world.can_pair(bare)
    with pytest.raises(ValueError, match="'captions' column"):
        world.match_pairs(bare, 1)


def test_attribute_truth_from_scenes_or_a_label(ds, photos):
    test = ds["test"]
    truth = world_of(test).attribute_truth(test)
    assert set(truth) == {"colour", "shape", "size"}
    classes, per_row = truth["shape"]
    assert per_row == [{o["shape"] for o in scene} for scene in test["objects"]]
    assert classes == sorted(set().union(*per_row))
    labelled = photos["train"].add_column("label", list(range(len(photos["train"]))))
    classes, per_row = world_of(labelled).attribute_truth(labelled)["label"]
    assert per_row == [{str(i)} for i in range(len(labelled))] and len(classes) == len(labelled)
    assert world_of(photos).attribute_truth(photos["train"]) == {}


def test_worlds_parse_captions_in_their_own_words():
    mentions, relations = synthetic_world().parse("a crimson circle above an azure box")
    assert [(m.colour, m.shape) for m in mentions] == [("red", "circle"), ("blue", "square")]
    assert [r.relation for r in relations] == ["above"]
    assert np.array_equal(synthetic_world().fit_matrix([], [SCENE]), np.zeros((0, 1), dtype=bool))


def test_only_the_data_package_and_the_cli_import_the_generator():
    """Code outside `mmlab.data` reaches the synthetic world through `world_of` alone."""
    import ast

    package = Path(__file__).resolve().parents[1] / "mmlab"
    found = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("data/") or rel == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                if node.module.startswith("mmlab.data.synthetic") or (
                    node.module == "mmlab.data" and "synthetic" in names
                ):
                    found.append(rel)
            elif isinstance(node, ast.Import):
                found += [rel for a in node.names if a.name.startswith("mmlab.data.synthetic")]
    assert found == []


def test_metrics_reads_captions_with_the_lexicons_parser():
    from mmlab import metrics

    assert metrics.parse_caption is lexicons.parse_caption
    assert metrics.Mention is lexicons.Mention and metrics.Relation is lexicons.Relation
