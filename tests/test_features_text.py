"""Text extractors: TF-IDF and bag of words, GRU/LSTM encoders, the offline MiniLM."""

from __future__ import annotations

import pytest
import torch

import mmlab.features as F

TEXTS = [
    "a red circle left of a blue square",
    "a small green triangle above a large red circle",
    "two yellow diamonds and a purple cross",
]


def test_tfidf_fits_on_the_given_texts_and_keeps_the_vocabulary():
    ex = F.create("text", "tfidf")
    assert not ex.fitted
    train = ex.extract(TEXTS)
    vocab = set(ex.vectorizer.get_feature_names_out())
    assert {"red", "circle", "triangle"} <= vocab and ex.dim == len(vocab) == train.shape[1]
    sha = ex.identity["vocabulary_sha"]
    test = ex.extract(["a red zebra"])  # fitted already: same vocabulary, unknown words dropped
    assert ex.identity["vocabulary_sha"] == sha and test.shape == (1, ex.dim)
    assert test[0, sorted(vocab).index("red")] > 0


def test_bow_counts_words():
    ex = F.create("text", "bow").fit(TEXTS)
    out = ex.extract(["red red circle"])
    names = list(ex.vectorizer.get_feature_names_out())
    assert out[0, names.index("red")] == 2 and out[0, names.index("circle")] == 1


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_encoders_pooled_and_sequence(cell):
    pooled = F.create("text", cell, hidden=32).fit(TEXTS)
    seq = F.create("text", cell, hidden=32, kind="sequence").fit(TEXTS)
    p, s = pooled.extract(TEXTS), seq.extract(TEXTS + ["red"])
    assert p.shape == (3, 32)
    assert s.shape == (4, 9, 32)  # longest text has 9 words; the one-word text is padded
    assert torch.all(s[3, 1:] == 0)
    # The pooled vector is the last real step of the sequence.
    torch.testing.assert_close(p[0], s[0, 7], rtol=1e-5, atol=1e-5)
    ids, lengths = pooled.encode_ids(["red unknownword"])
    assert ids[0, 1] == 1 and lengths.tolist() == [2]


def test_minilm_mean_pooled_normalised_and_meaningful():
    ex = F.create("text", "minilm")
    out = ex.extract(["a red circle", "a crimson disc", "the stock market fell sharply"])
    assert out.shape == (3, 384)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert out[0] @ out[1] > out[0] @ out[2] + 0.2


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from mmlab.features.text import minilm_path

    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(
        TEXTS, convert_to_tensor=True
    )
    ours = F.create("text", "minilm", device="cpu").extract(TEXTS)
    torch.testing.assert_close(ours, reference.cpu(), rtol=1e-4, atol=1e-4)


def test_minilm_token_sequences_are_padded_with_zeros():
    ex = F.create("text", "minilm", kind="sequence")
    out = ex.extract(["red", "a small green triangle above a large red circle"], batch_size=1)
    assert out.shape[0] == 2 and out.shape[2] == 384 and ex.kind == "sequence"
    assert out.shape[1] == 11  # [CLS] + 9 words + [SEP]
    assert torch.all(out[0, 3:] == 0) and torch.all(out[0, :3].abs().sum(-1) > 0)


def test_non_text_items_are_named():
    with pytest.raises(TypeError, match="expected strings"):
        F.create("text", "tfidf").extract(["fine", 3])
