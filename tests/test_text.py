"""Tokenizer and vocabulary for captioning."""

from __future__ import annotations

import json

import pytest
import torch

from mmlab.data.text import SPECIALS, Vocabulary, tokenize

CAPTIONS = [
    "A big, red circle to the left of a blue box.",
    "There is a RED circle!",
    "a small blue box; it's above the circle",
]


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A big, red circle to the LEFT of a blue box.") == [
        "a",
        "big",
        "red",
        "circle",
        "to",
        "the",
        "left",
        "of",
        "a",
        "blue",
        "box",
    ]
    assert tokenize("it's 2 boxes -- really?!") == ["it's", "2", "boxes", "really"]
    assert tokenize("  ...  ") == []


def test_build_orders_by_frequency_and_applies_min_freq():
    vocab = Vocabulary.build(CAPTIONS, min_freq=2)
    assert vocab.itos[:4] == list(SPECIALS)
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.itos[4] == "a"  # the most frequent word
    assert "circle" in vocab and "big" not in vocab
    assert len(vocab) == 4 + len({"a", "red", "circle", "blue", "box", "the"})


def test_build_accepts_lists_of_references_per_image():
    nested = Vocabulary.build([CAPTIONS[:2], CAPTIONS[2:]])
    assert nested == Vocabulary.build(CAPTIONS)


def test_encode_decode_round_trip_with_unknown_words():
    vocab = Vocabulary.build(CAPTIONS)
    ids = vocab.encode("A red circle above the blue box")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == "a red circle above the blue box"
    unknown = vocab.encode("a green circle")
    assert unknown[2] == vocab.unk_id
    assert vocab.decode(unknown) == "a <unk> circle"


def test_max_len_truncates_words_but_keeps_end():
    vocab = Vocabulary.build(CAPTIONS, max_len=3)
    ids = vocab.encode("a red circle to the left of a blue box")
    assert len(ids) == 5 and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == "a red circle"
    assert len(vocab.encode("a red circle to the left", max_len=5)) == 7


def test_encode_batch_pads_to_the_longest():
    vocab = Vocabulary.build(CAPTIONS)
    batch = vocab.encode_batch(["a red circle", "a circle"])
    assert batch.dtype == torch.long and batch.shape == (2, 5)
    assert batch[1, -1].item() == vocab.pad_id
    assert vocab.lengths(batch) == [5, 4]
    assert vocab.decode_batch(batch) == ["a red circle", "a circle"]


def test_decode_stops_at_end_and_skips_padding():
    vocab = Vocabulary.build(CAPTIONS)
    red, box = vocab.stoi["red"], vocab.stoi["box"]
    assert vocab.decode([vocab.start_id, red, vocab.pad_id, box, vocab.end_id, red]) == "red box"
    assert vocab.decode(torch.tensor([red, 10_000])) == "red <unk>"


def test_save_and_load_round_trip_atomically(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, min_freq=1, max_len=12)
    path = vocab.save(tmp_path / "model" / "vocab.json")
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary left
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.max_len == 12
    assert loaded.encode("a red box") == vocab.encode("a red box")


def test_load_rejects_files_that_are_not_vocabularies(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        Vocabulary.load(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"itos": ["a", "b"]}))
    with pytest.raises(ValueError, match="not an mmlab vocabulary"):
        Vocabulary.load(other)


def test_vocabulary_of_the_synthetic_captions_is_small(tiny_synthetic):
    rows = [
        json.loads(line)
        for line in (tiny_synthetic / "train" / "metadata.jsonl").read_text().splitlines()
    ]
    vocab = Vocabulary.build([r["captions"] for r in rows])
    assert 20 < len(vocab) < 80
    for row in rows:
        for caption in row["captions"]:
            assert vocab.decode(vocab.encode(caption)) == " ".join(tokenize(caption))
