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
        refs, {"1": "a red circle above a blue square", "2": "one yellow star"},
        metrics=("meteor",), per_image=True,
    )  # fmt: skip
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
