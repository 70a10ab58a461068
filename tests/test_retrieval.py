"""mmlab.retrieval on small cases: metrics by hand, the masked InfoNCE loss, heads, training on
features with a known link, baselines, the oracle, zero-shot scoring and the search index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmlab.core import progress
from mmlab.retrieval import baselines, heads, index, metrics, oracle, train, zeroshot
from mmlab.retrieval.model import info_nce
from mmlab.retrieval.pairs import PairData, PairSplit, Side


# --------------------------------------------------------------------------- metrics
def test_retrieval_on_a_3x3_matrix_by_hand():
    sim = [[0.9, 0.1, 0.3], [0.8, 0.5, 0.2], [0.1, 0.7, 0.4]]
    assert metrics.retrieval_ranks(sim).tolist() == [1, 2, 2]
    s = metrics.retrieval_scores(sim, ks=(1, 2))
    assert s == pytest.approx(
        {"recall_at_1": 1 / 3, "recall_at_2": 1.0, "median_rank": 2.0, "mean_rank": 5 / 3}
    )
    # image -> captions: query 1 counts as right if either of its captions (1 or 0) ranks first
    assert metrics.retrieval_ranks(sim, targets=[[0], [1, 0], [2]]).tolist() == [1, 1, 2]


def test_retrieval_ties_count_against_the_model():
    assert metrics.retrieval_ranks(np.ones((4, 4))).tolist() == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="2 targets for 3 queries"):
        metrics.retrieval_ranks(np.eye(3), targets=[0, 1])


def test_both_directions_by_hand():
    # captions 0, 1 of image 0 and caption 2 of image 1
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    s = metrics.both_directions(sim, [0, 0, 1], [0, 1], ("text", "image"), ks=(1,))
    assert s["text_to_image_recall_at_1"] == pytest.approx(2 / 3)  # caption 1 ranks image 1 first
    assert s["text_to_image_mean_rank"] == pytest.approx(4 / 3)
    # image 0: its caption 0 scores best (0.9); image 1: caption 1 (0.8, not its own) beats 2 (0.7)
    assert s["image_to_text_recall_at_1"] == pytest.approx(1 / 2)
    assert s["image_to_text_median_rank"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="does not match"):
        metrics.both_directions(sim, [0, 1], [0, 1], ("text", "image"))


# --------------------------------------------------------------------------- loss and heads
def test_info_nce_masks_captions_of_the_same_image():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    rows, scale = torch.tensor([0, 0, 1]), torch.tensor(10.0)
    loss = info_nce(a, b, rows, scale)
    logits = scale * a @ b.T
    # same image, off-diagonal
    keep = ~torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    by_hand = [
        -torch.log_softmax(m[i][keep[i]], 0)[keep[i][: i + 1].sum() - 1]
        for m in (logits, logits.T)
        for i in range(3)
    ]
    assert loss == pytest.approx(float(torch.stack(by_hand).mean()), rel=1e-5)
    # a hard negative for a[i] only adds a column to the a -> b direction
    with_extra = info_nce(a, b, rows, scale, extra_b=F.normalize(torch.randn(2, 8), dim=1))
    assert with_extra > loss


def test_heads_read_grids_sequences_and_vectors():
    grid, seq, vec = torch.randn(2, 16, 4, 4), torch.randn(2, 10, 12), torch.randn(2, 20)
    assert heads.create("auto", grid.shape[1:], 8)(grid).shape == (2, 8)
    assert heads.create("auto", seq.shape[1:], 8)(seq).shape == (2, 8)
    assert heads.create("auto", vec.shape[1:], 8)(vec).shape == (2, 8)
    with pytest.raises(KeyError, match="valid names: attention, auto, linear, mlp"):
        heads.create("transformer", vec.shape[1:], 8)


def test_attention_head_positions_tell_cells_apart():
    """The same feature in another cell gives another vector: the head knows where."""
    head = heads.create("attention", (4, 3, 3), 8).eval()
    x = torch.zeros(2, 4, 3, 3)
    feature = torch.tensor([1.0, -1.0, 2.0, 0.0])
    x[0, :, 0, 0] = feature
    x[1, :, 2, 2] = feature
    out = head(x)
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_sequence_head_ignores_padding_and_reads_shorter_queries():
    """All-zero steps are padding (the feature cache pads across batches): the same sequence
    padded to the trained length, or not padded at all (one query), gives the same vector;
    a longer one is cut to the trained length."""
    torch.manual_seed(0)
    head = heads.create("attention", (10, 12), 8).eval()
    steps = torch.randn(1, 6, 12)
    padded = F.pad(steps, (0, 0, 0, 4))
    torch.testing.assert_close(head(padded), head(steps))
    longer = torch.cat([padded, torch.randn(1, 3, 12)], dim=1)
    torch.testing.assert_close(head(longer), head(padded))
    other = padded.clone()
    other[0, 7] = 1.0  # a real step where there was padding changes the vector
    assert not torch.allclose(head(other), head(padded), atol=1e-4)


# --------------------------------------------------------------------------- training
def linked_pairs(n_rows: int, captions: int = 2, seed: int = 0) -> PairSplit:
    """Grids whose cells hold a code, and 'captions' that are noisy linear views of that code."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(n_rows, 6, generator=g)
    grid = torch.randn(n_rows, 6, 3, 3, generator=g) * 0.3 + codes[:, :, None, None]
    rows = torch.arange(n_rows).repeat_interleave(captions)
    mix = torch.randn(6, 16, generator=torch.Generator().manual_seed(99))
    text = codes[rows] @ mix + 0.3 * torch.randn(len(rows), 16, generator=g)
    return PairSplit(
        Side("image", grid, torch.arange(n_rows)),
        Side("text", text, rows),
        [str(i) for i in range(n_rows)],
    )


@pytest.fixture(scope="module")
def linked():
    splits = {
        "train": linked_pairs(400, seed=0),
        "validation": linked_pairs(60, seed=1),
        "test": linked_pairs(60, seed=2),
    }
    return PairData("image-text", ("image", "text"), {"image": "x", "text": "y"}, splits)


def test_training_learns_a_known_link_far_above_chance(linked, tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV, str(tmp_path))  # as under the batch runner
    config = train.TrainConfig(epochs=8, batch_size=64, lr=3e-3, dim=16, width=32, patience=8)
    result = train.train_retrieval(linked, config)
    epoch = progress.read(tmp_path).epoch  # what the runner shows while it trains
    assert epoch["desc"] == "image-text seed 0" and epoch["epoch"] == len(result.history)
    assert epoch["metrics"]["val_mean_recall"] == pytest.approx(
        result.history["val_mean_recall"].iloc[-1]
    )
    scores = train.evaluate(result.model, linked.splits["test"])
    assert scores["text_to_image_recall_at_1"] > 0.5  # chance: 1/60
    assert scores["image_to_text_recall_at_5"] > 0.8
    assert list(result.history["epoch"]) == list(range(1, len(result.history) + 1))
    assert 1 <= result.best_epoch <= 8


def test_positives_pair_each_caption_with_its_image(linked):
    left, right = linked.splits["test"].positives()
    assert left.tolist()[:4] == [0, 0, 1, 1] and right.tolist()[:4] == [0, 1, 2, 3]


def test_cca_baseline_finds_a_linear_link_and_random_is_chance(linked):
    flat = {}
    for name, s in linked.splits.items():  # pooled views: the grid's mean per channel
        flat[name] = PairSplit(Side("image", s.left.x.mean((2, 3)), s.left.rows), s.right, s.ids)
    test = linked.splits["test"]
    rows, items = test.right.rows.numpy(), test.left.rows.numpy()
    cca = baselines.cca_similarity(flat["train"], flat["test"], components=6, pca=16)
    s = metrics.both_directions(cca, rows, items, ("text", "image"))
    assert s["text_to_image_recall_at_1"] > 0.5
    chance = metrics.both_directions(
        baselines.random_similarity(test, seed=0), rows, items, ("text", "image")
    )
    assert chance["text_to_image_recall_at_10"] < 0.4  # expected 10/60


# --------------------------------------------------------------------------- oracle, zero-shot
SCENE = [
    {"shape": "circle", "colour": "red", "size": "large", "x": 0.2, "y": 0.5},
    {"shape": "square", "colour": "blue", "size": "small", "x": 0.8, "y": 0.5},
]


def test_oracle_fits_only_captions_true_of_the_scene():
    assert oracle.fits("a large red circle left of a small blue square", SCENE)
    assert oracle.fits("a red circle and a blue square", SCENE)  # sizes and places unstated
    assert not oracle.fits("a red circle right of a blue square", SCENE)  # wrong relation
    assert not oracle.fits("a small red circle and a blue square", SCENE)  # wrong size
    assert not oracle.fits("a red circle", SCENE)  # an object left out
    assert not oracle.fits("a green circle and a blue square", SCENE)


def test_oracle_scores_ambiguous_captions_by_their_fitting_scenes():
    lone = [
        [{"shape": "circle", "colour": "red", "size": s, "x": 0.5, "y": 0.5}]
        for s in ("large", "small")
    ]
    scores, fitting = oracle.oracle_scores(
        ["a red circle", "a small red circle"], [0, 1], lone, draws=200
    )
    assert fitting.tolist() == [[True, True], [False, True]]
    assert scores["own_fits"] == 1.0
    # caption 0 fits both scenes (R@1 1/2 on average), caption 1 only its own
    assert scores["text_to_image_recall_at_1"] == pytest.approx(0.75, abs=0.06)


def test_zero_shot_classify_by_hand():
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    prompts = np.array([[1.0, 0.0], [0.0, 1.0]])
    s = zeroshot.classify(items, prompts, ["red", "blue"], [{"red"}, {"red"}, {"red", "blue"}])
    assert s == pytest.approx({"accuracy": 2 / 3, "chance": (0.5 + 0.5 + 1.0) / 3})
    assert zeroshot.prompts("colour", ["red"]) == ["a photo of a red object"]


# --------------------------------------------------------------------------- index
def test_exact_index_returns_the_best_items_in_order():
    gallery = F.normalize(torch.randn(50, 8), dim=1).numpy()
    scores, found = index.make_index(gallery, "exact").search(gallery[[3, 7]], k=3)
    assert found[:, 0].tolist() == [3, 7] and np.all(np.diff(scores, axis=1) <= 0)
    brute = gallery[[3, 7]] @ gallery.T
    assert np.allclose(scores, -np.sort(-brute, axis=1)[:, :3], atol=1e-6)
    with pytest.raises(KeyError, match="valid: auto, exact, faiss"):
        index.make_index(gallery, "annoy")


def test_faiss_gives_the_same_answers_on_a_small_gallery():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    gallery = F.normalize(torch.randn(2000, 32, generator=g), dim=1).numpy()
    queries = F.normalize(torch.randn(40, 32, generator=g), dim=1).numpy()
    exact = index.make_index(gallery, "exact").search(queries, 10)
    faiss = index.make_index(gallery, "faiss").search(queries, 10)
    assert (exact[1] == faiss[1]).all()
    assert np.allclose(exact[0], faiss[0], atol=1e-5)
    assert index.make_index(gallery, "auto").name == "exact"  # small: the matrix product


def test_a_text_query_imports_no_image_or_audio_stack():
    """`mmlab search "a sentence"` loads the model and the text encoder only: torchvision,
    scikit-learn and librosa stay out of the process (they cost seconds at its start)."""
    import subprocess
    import sys

    code = (
        "import sys, mlflow.artifacts; from mmlab.retrieval.saving import load_searcher; "
        "from mmlab.features.registry import lookup; lookup('text', 'minilm'); "
        "print([m for m in ('torchvision', 'sklearn', 'librosa') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
