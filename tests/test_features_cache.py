"""The feature cache: a hit reads what was stored, a new identity misses, damage is rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import mmlab.features as F
from mmlab.features import cache


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def dataset_dict() -> datasets.DatasetDict:
    feats = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "captions": datasets.List(datasets.Value("string")),
        }
    )

    def split(name, n, seed):
        return datasets.Dataset.from_dict(
            {
                "id": [f"{name}-{i}" for i in range(n)],
                "image": _images(n, seed),
                "captions": [[f"caption {i} of {name}", "another"] for i in range(n)],
            },
            features=feats,
        )

    return datasets.DatasetDict({"train": split("train", 6, 0), "test": split("test", 4, 1)})


class Counting:
    """Wraps an extractor and counts how often it really computes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, items, **kwargs):
        self.calls += 1
        return self.inner.extract(items, **kwargs)

    def batches(self, items, **kwargs):  # what the cache streams images from
        self.calls += 1
        return self.inner.batches(items, **kwargs)


def test_second_request_is_a_hit(dataset_dict):
    ex = Counting(F.create("image", "small_cnn", image_size=32, device="cpu"))
    first = cache.features(dataset_dict, "train", ex)
    second = cache.features(dataset_dict, "train", ex)
    assert ex.calls == 1
    assert first.shape == (6, 256)
    assert torch.equal(first, second)
    direct = ex.inner.extract(list(dataset_dict["train"]["image"]))
    assert torch.allclose(first, direct, atol=1e-5)


def test_grid_round_trips_with_its_shape(dataset_dict):
    ex = F.create("image", "small_cnn", image_size=64, kind="grid", layer="mid", device="cpu")
    stored = cache.features(dataset_dict, "test", ex)
    again = cache.features(dataset_dict, "test", ex)
    assert stored.shape == again.shape == (4, 256, 4, 4)
    assert torch.equal(stored, again)


def test_different_identity_or_split_misses(dataset_dict):
    a = Counting(F.create("image", "small_cnn", image_size=48, device="cpu"))
    b = Counting(F.create("image", "small_cnn", image_size=48, seed=1, device="cpu"))
    fa = cache.features(dataset_dict, "train", a)
    fb = cache.features(dataset_dict, "train", b)
    cache.features(dataset_dict, "test", a)
    assert a.calls == 2 and b.calls == 1
    assert not torch.allclose(fa, fb)
    assert a.identity != b.identity


def test_damaged_entry_is_rebuilt(dataset_dict, caplog):
    ex = Counting(F.create("image", "small_cnn", image_size=32, seed=7, device="cpu"))
    # a copy: the returned tensor maps the very file this test truncates in place
    good = cache.features(dataset_dict, "train", ex).clone()
    key = cache.cache_key(cache.dataset_fingerprint(dataset_dict), "train", "image", ex.identity)
    entry = cache.entry_path(key, ex, "train")
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    stored = entry / cache.FEATURES
    stored.write_bytes(stored.read_bytes()[:-64])  # truncated, as after a crash or a full disk
    with caplog.at_level("WARNING"):
        rebuilt = cache.features(dataset_dict, "train", ex)
    assert ex.calls == 2
    assert "damaged" in caplog.text
    assert torch.equal(good, rebuilt)
    assert json.loads((entry / cache.MANIFEST).read_text())["files"] == manifest["files"]


def test_text_column_uses_first_caption(dataset_dict):
    ex = F.create("text", "tfidf", device="cpu")
    feats = cache.features(dataset_dict, "train", ex)
    assert feats.shape[0] == 6


def test_missing_column_or_split_is_named(dataset_dict):
    ex = F.create("image", "small_cnn", image_size=32, device="cpu")
    with pytest.raises(KeyError, match="'audio'"):
        cache.features(dataset_dict, "train", ex, column="audio")
    with pytest.raises(KeyError, match="validation"):
        cache.features(dataset_dict, "validation", ex)


def test_batches_stream_into_a_memory_mapped_entry(dataset_dict, tmp_path):
    ex = F.create("image", "small_cnn", image_size=32, seed=3, device="cpu")
    chunks = list(ex.batches(list(dataset_dict["train"]["image"]), batch_size=4))
    assert [len(c) for c in chunks] == [4, 2]
    entry = tmp_path / "entry"
    cache.write_entry(entry, iter(chunks), ["a", "b", "c", "d", "e", "f"], parts={}, rows=6)
    stored = cache.read_entry(entry, ["a", "b", "c", "d", "e", "f"])
    assert torch.equal(stored, torch.cat(chunks))
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the tensor maps the file, it was not loaded whole
        assert str(entry / cache.FEATURES) in maps.read_text()


def test_a_stream_short_of_its_rows_leaves_no_entry(tmp_path):
    entry = tmp_path / "entry"
    with pytest.raises(ValueError, match="3 rows of features written, 4 announced"):
        cache.write_entry(entry, iter([torch.zeros(3, 2)]), None, parts={}, rows=4)
    assert not entry.exists() and not list(tmp_path.iterdir())


def test_a_second_writer_leaves_the_first_entry_in_place(tmp_path):
    """Two kernels extracting the same split at once: the second to finish must not delete the
    entry the first put in place (a reader may be mapping it), and reads the first one."""
    entry = tmp_path / "entry"
    cache.write_entry(entry, torch.ones(3, 2), ["a", "b", "c"], parts={})
    first = cache.read_entry(entry)
    with pytest.raises(OSError):
        cache.write_entry(entry, torch.zeros(3, 2), ["a", "b", "c"], parts={})
    assert torch.equal(cache.read_entry(entry), first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
