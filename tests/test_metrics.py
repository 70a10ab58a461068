"""Caption, grounded and retrieval metrics against values worked out by hand on small cases."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from mmlab import metrics

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not installed")


def score(refs, hyp, **kw):
    return metrics.caption_scores({"x": refs}, {"x": hyp}, metrics=("bleu", "rouge_l"), **kw)


# --------------------------------------------------------------------------- BLEU, ROUGE-L
def test_bleu_by_hand():
    # unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3; equal lengths, so no brevity penalty
    s = score(["the cat is on the mat"], "the cat sat on the mat")
    assert s["bleu1"] == pytest.approx(5 / 6, abs=1e-6)
    assert s["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-6)
    assert s["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert s["bleu4"] < 1e-3  # no 4-gram in common: only the toolkit's tiny smoothing is left


def test_bleu_brevity_penalty_and_closest_reference():
    # all unigrams match, but 2 words against a closest reference of 3: BP = exp(1 - 3/2)
    s = score(["the cat sat", "a cat sat on a big mat"], "the cat")
    assert s["bleu1"] == pytest.approx(math.exp(1 - 3 / 2), abs=1e-6)


def test_rouge_l_by_hand():
    # LCS("a b c", "a x b y c z") = 3: P = 1, R = 1/2, F with beta = 1.2
    s = score(["a x b y c z"], "a b c")
    p, r, b2 = 1.0, 0.5, 1.2**2
    assert s["rouge_l"] == pytest.approx((1 + b2) * p * r / (r + b2 * p), abs=1e-9)


def test_tokenisation_lowercases_and_drops_punctuation():
    s = score(["The cat, on the MAT."], "the cat on the mat")
    assert s["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert s["rouge_l"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- CIDEr-D
def test_cider_by_hand_two_images():
    # N = 2 images, each n-gram in one image's references: idf = log 2 for all; identical
    # vectors give cosine 1 for 1- and 2-grams, nothing for 3- and 4-grams: 10 * (1+1+0+0)/4
    refs = {"1": ["a b"], "2": ["c d"]}
    s, per_image = metrics.caption_scores(
        refs, {"1": "a b", "2": "c d"}, ("cider",), per_image=True
    )
    assert s["cider"] == pytest.approx(5.0)
    assert per_image["cider"].tolist() == pytest.approx([5.0, 5.0])


def test_cider_idf_comes_from_the_reference_corpus():
    # "a" is in every image's references: idf = log 2 - log 2 = 0, so matching it earns nothing;
    # on a single image every n-gram has idf 0 and CIDEr is 0 however good the caption
    refs = {"1": ["a b"], "2": ["a c"]}
    assert metrics.caption_scores(refs, {"1": "a", "2": "a"}, ("cider",))["cider"] == 0.0
    assert metrics.caption_scores({"1": ["a b"]}, {"1": "a b"}, ("cider",))["cider"] == 0.0


# --------------------------------------------------------------------------- METEOR and Java
@needs_java
def test_meteor_identical_and_disjoint():
    refs = {"1": ["a red circle above a blue square"], "2": ["two green triangles"]}
    s, per_image = metrics.caption_scores(
        refs,
        {"1": "a red circle above a blue square", "2": "one yellow star"},
        metrics=("meteor",),
        per_image=True,
    )
    assert per_image.loc["1", "meteor"] == pytest.approx(1.0)
    assert per_image.loc["2", "meteor"] == pytest.approx(0.0)
    assert 0.0 < s["meteor"] < 1.0


def test_meteor_left_out_with_a_note_when_java_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java anywhere on PATH
    assert not metrics.java_available()
    refs = {"1": ["A cat on the mat."], "2": ["a dog"]}
    with pytest.warns(RuntimeWarning, match="meteor left out: java not found"):
        ev = metrics.evaluate_captions(refs, {"1": "a cat on a mat", "2": "a dog"})
    assert "meteor" not in ev.scores and "meteor" not in ev.per_image
    assert {"bleu4", "rouge_l", "cider"} <= set(ev.scores)
    assert ev.tokenizer == "python" and "meteor left out" in ev.notes()


@needs_java
def test_python_tokenizer_agrees_with_ptb():
    sentences = [
        "A red circle is left of a big blue square.",
        "Don't look: the man's (small) t-shirt \"is\" green!",
        "Two dogs, three cats; and a bird?",
        "It's 3.5 meters tall and costs $1,000 -- really...",
        "The U.S. flag flies at 5 p.m. near Mr. Smith's house.",
        "A woman [in a hat] rides a {bike} & smiles 50% of the time.",
        "He said 'hello' and/or goodbye - then left.",
        "they're we've I'll she'd I'm can't cannot gonna",
        "  multiple   spaces\tand tabs  ",
        "",
        "A CRIMSON box sits to the right of a tiny teal disc",
    ]
    assert metrics.python_tokenize(sentences) == metrics.ptb_tokenize(sentences)


def test_evaluate_many_matches_separate_calls():
    refs = {"1": ["a red circle", "a crimson disc"], "2": ["a blue box", "one blue square"]}
    p1, p2 = {"1": "a red circle", "2": "a blue square"}, {"1": "a red box", "2": "a disc"}
    both = metrics.evaluate_many({"p1": (refs, p1), "p2": (refs, p2)}, ("bleu", "cider"))
    for name, preds in (("p1", p1), ("p2", p2)):
        alone = metrics.caption_scores(refs, preds, ("bleu", "cider"))
        assert both[name].scores == pytest.approx(alone)


def test_human_agreement_is_leave_one_out():
    refs = {"1": ["a b c", "a b c", "x y z"], "2": ["only one"]}
    others, held_out = metrics.leave_one_out(refs)
    assert held_out == {"1#0": "a b c", "1#1": "a b c", "1#2": "x y z"}  # "2" has no peers
    assert others["1#2"] == ["a b c", "a b c"]
    ev = metrics.human_agreement(refs, metrics=("bleu",))
    assert ev.per_image["bleu1"].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)


def test_bad_inputs_name_the_problem():
    with pytest.raises(KeyError, match="no references.*'b'"):
        metrics.caption_scores({"a": ["x"]}, {"a": "x", "b": "y"})
    with pytest.raises(ValueError, match="references for 'a'"):
        metrics.caption_scores({"a": []}, {"a": "x"})
    with pytest.raises(KeyError, match="valid: bleu, meteor, rouge_l, cider"):
        metrics.caption_scores({"a": ["x"]}, {"a": "x"}, metrics=("spice",))
    with pytest.raises(ValueError, match="empty"):
        metrics.caption_scores({"a": ["x"]}, {})


def test_empty_prediction_scores_zero():
    s = score(["a cat"], "")
    assert s["bleu1"] == 0.0 and s["rouge_l"] == 0.0


def test_validation_sized_call():
    """300 images x 5 references, BLEU + CIDEr: the per-epoch validation call (sanity, no limit)."""
    rng = np.random.default_rng(0)
    words = "a the red blue green circle square triangle left right of above below big".split()
    refs = {str(i): [" ".join(rng.choice(words, 8)) for _ in range(5)] for i in range(300)}
    preds = {k: v[0] for k, v in refs.items()}
    s = metrics.caption_scores(refs, preds, ("bleu", "cider"))
    assert s["bleu1"] == pytest.approx(1.0, abs=1e-6) and s["cider"] > 0


# --------------------------------------------------------------------------- grounded (CHAIR)
SCENE = [
    {"colour": "red", "shape": "circle", "size": "large", "x": 0.2, "y": 0.5},
    {"colour": "blue", "shape": "square", "size": "small", "x": 0.8, "y": 0.5},
]
CAPTIONS = {
    "right": "a large red circle to the left of a small blue square",
    "colour": "a green circle right of a blue square",  # green circle: wrong colour
    "size": "a small red circle",  # the red circle is there, but large
    "shape": "a crimson wedge above an azure box",  # red triangle: wrong shape
    "object": "a yellow diamond",  # neither colour nor shape in the scene
    "relation": "a red circle right of a blue square",  # both there, relation wrong
    "none": "a picture with nothing named",
}


def test_parse_caption_finds_mentions_and_relations():
    mentions, relations = metrics.parse_caption("a big crimson plus sign to the left of a tiny box")
    assert [(m.colour, m.shape, m.size) for m in mentions] == [("red", "cross", "large")]
    assert relations == []  # "tiny box" has no colour: not an object mention
    mentions, relations = metrics.parse_caption("A red circle, under a BLUE big square.")
    assert [(m.colour, m.shape, m.size) for m in mentions] == [
        ("red", "circle", None),
        ("blue", "square", "large"),
    ]
    assert [r.relation for r in relations] == ["below"]
    assert metrics.parse_caption("a red and a circle") == ([], [])  # words must be adjacent


def test_grounded_scores_by_hand():
    objects = {k: SCENE for k in CAPTIONS}
    s, table = metrics.grounded_scores(CAPTIONS, objects, per_image=True)
    # 10 objects named, 3 not in the scene (colour, shape, object); 3 of 7 captions affected
    assert s["chair_i"] == pytest.approx(3 / 10)
    assert s["object_precision"] == pytest.approx(7 / 10)
    assert s["chair_s"] == pytest.approx(3 / 7)
    # 14 scene objects; named: right 2, colour 1, size 1, shape 1, relation 2
    assert s["object_recall"] == pytest.approx(7 / 14)
    assert s["colour_error"] == s["shape_error"] == s["size_error"] == pytest.approx(1 / 10)
    # checkable relations (both ends in the scene): "right" (true) and "relation" (false)
    assert s["relation_error"] == pytest.approx(1 / 2)
    assert table.loc["object", "object_errors"] == 1 and table.loc["none", "mentions"] == 0


def test_grounded_scores_accept_columnar_scenes_and_name_bad_input():
    columnar = {key: [obj[key] for obj in SCENE] for key in SCENE[0]}  # as `datasets` may give it
    s = metrics.grounded_scores({"a": CAPTIONS["right"]}, {"a": columnar})
    assert s["object_precision"] == 1.0 and s["object_recall"] == 1.0
    assert math.isnan(metrics.grounded_scores({"a": "nothing"}, {"a": SCENE})["chair_i"])
    with pytest.raises(KeyError, match="no scene objects.*'b'"):
        metrics.grounded_scores({"b": "a red circle"}, {"a": SCENE})
    with pytest.raises(ValueError, match=r"objects\['a'\].*\['size'\]"):
        metrics.grounded_scores(
            {"a": "a red circle"}, {"a": [{"colour": "red", "shape": "circle", "x": 0, "y": 0}]}
        )


def test_references_of_the_synthetic_dataset_are_perfectly_grounded():
    """The generator's own captions name every object rightly: the parser agrees with it."""
    from mmlab.data import synthetic

    rng = np.random.default_rng(0)
    captions, objects = {}, {}
    for i in range(200):
        scene = synthetic.sample_scene(rng)
        captions[str(i)] = synthetic.caption(rng, scene)
        objects[str(i)] = [o.as_dict() for o in scene.objects]
    s, table = metrics.grounded_scores(captions, objects, per_image=True)
    assert s["object_precision"] == 1.0 and s["object_recall"] == 1.0
    assert s["chair_s"] == 0.0 and s["relation_error"] == 0.0
    assert table["relations"].sum() > 20  # relations were actually checked


# --------------------------------------------------------------------------- caption statistics
def test_lengths_and_vocabulary_use_by_hand():
    assert metrics.caption_lengths(["A red circle.", "", "a b, c d"]).tolist() == [3, 0, 4]
    use = metrics.vocabulary_use(["a red circle", "a red square"], max_n=2)
    # unigrams a, red, circle, a, red, square: 4 distinct of 6; bigrams 3 distinct of 4
    assert use == pytest.approx(
        {"distinct_1": 4, "distinct_1_ratio": 4 / 6, "distinct_2": 3, "distinct_2_ratio": 3 / 4}
    )


def test_evaluation_figures_draw():
    """The notebook's figures build from the shapes the captioner and the metrics return."""
    import pandas as pd
    import torch
    from PIL import Image

    from mmlab.plots import evaluation as plots

    images = [Image.new("RGB", (40 + 8 * i, 32), (200, 40 * i, 0)) for i in range(2)]
    fig = plots.caption_examples(images, ["a red circle", ""], [["a red disc"], ["x"]], [1.5, 0])
    assert len(fig.axes) == 2 and "CIDEr 1.50" in fig.axes[0].get_title()
    words = [["a", "red", "circle"], ["a"]]
    fig = plots.attention_maps(images, words, [torch.rand(3, 4, 4), torch.rand(1, 4, 4)])
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "a", "red", "circle"]
    maps = plots.upsample_attention(torch.rand(3, 4, 4), (32, 48))
    assert maps.shape == (3, 32, 48)
    table = pd.DataFrame({"bleu4": [0.5, 0.6], "cider": [1.0, 1.2]}, index=[1, 3])
    assert len(plots.metrics_by_beam(table, pd.Series({"cider": 2.0})).axes) == 2
    plots.caption_lengths({"beam 1": [3, 4], "references": [5, 6, 7]})
    use = pd.DataFrame({"beam 1": metrics.vocabulary_use(["a b c"])}).T
    assert len(plots.vocabulary_use(use).axes) == 1


# --------------------------------------------------------------------------- reports
def test_evaluate_sets_scores_every_set_and_the_human_row():
    refs = {k: [CAPTIONS["right"], "a big crimson ball left of a tiny blue box"] for k in "ab"}
    objects = {k: SCENE for k in "ab"}
    sets = {
        1: {"a": CAPTIONS["right"], "b": CAPTIONS["right"]},
        3: {"a": CAPTIONS["colour"], "b": CAPTIONS["right"]},
    }
    report = metrics.evaluate_sets(refs, sets, objects, metrics=("bleu", "cider"))
    assert list(report.table.index) == [1, 3, "human"]
    assert report.table.loc[1, "bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert report.table.loc[3, "chair_i"] == pytest.approx(1 / 4)  # green circle of 4 named
    assert report.table.loc["human", "object_precision"] == 1.0
    assert report.table.loc["human", "mean_length"] == 12  # first reference of each image
    assert set(report.per_image[3].columns) >= {"bleu4", "cider", "hallucinated"}
    row = report.row(1, prefix="test_")
    assert row["test_chair_i"] == 0.0 and "test_cider" in row
    assert "tokenizer=" in report.notes
