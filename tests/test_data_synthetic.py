"""The embedded dataset: layout, determinism, captions that ground in the scene, the match task."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmlab.data import synthetic


def _rows(root: Path, split: str = "train") -> list[dict]:
    lines = (root / split / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _all_rows(root: Path) -> list[dict]:
    return [r for split in ("train", "validation", "test") for r in _rows(root, split)]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_is_an_imagefolder_with_all_modalities(tiny_synthetic):
    sizes = synthetic.split_sizes(48)
    assert sizes == {"train": 38, "validation": 5, "test": 5}
    for split, count in sizes.items():
        rows = _rows(tiny_synthetic, split)
        assert len(rows) == count
        for row in rows:
            for column in ("file_name", "audio", "video"):
                assert (tiny_synthetic / split / row[column]).is_file(), row[column]
            assert len(row["captions"]) == synthetic.N_CAPTIONS
            assert row["n_objects"] == len(row["objects"]) in (1, 2, 3)
            assert row["motion"] in synthetic.MOTIONS
            assert row["first_shape"] == row["objects"][0]["shape"]
    assert synthetic.info(tiny_synthetic)["n"] == 48
    assert not list(tiny_synthetic.parent.glob(".*.tmp")), "temporary folder left behind"


def test_media_have_the_promised_formats(tiny_synthetic):
    import av
    import soundfile
    from PIL import Image

    row = _rows(tiny_synthetic)[0]
    image = Image.open(tiny_synthetic / "train" / row["file_name"])
    assert image.size == (64, 64) and image.mode == "RGB"
    wave, rate = soundfile.read(tiny_synthetic / "train" / row["audio"])
    assert rate == 16_000 and len(wave) == 16_000 and np.abs(wave).max() > 0.1
    with av.open(str(tiny_synthetic / "train" / row["video"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == synthetic.VIDEO_FRAMES and frames[0].shape == (64, 64, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1, "objects move"


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    # 64 samples is where the process pool starts, so this compares pooled with serial.
    a = synthetic.generate(tmp_path / "a", n=64, seed=5, image_size=48, workers=1)
    b = synthetic.generate(tmp_path / "b", n=64, seed=5, image_size=48, workers=2)
    c = synthetic.generate(tmp_path / "c", n=64, seed=6, image_size=48, workers=1)
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(c)


def test_every_caption_names_each_object_with_lexicon_words(tiny_synthetic):
    for row in _all_rows(tiny_synthetic):
        truth = Counter((o["colour"], o["shape"]) for o in row["objects"])
        for text in row["captions"]:
            found = synthetic.mentions(text)
            colours = [v for k, v in found if k == "colour"]
            shapes = [v for k, v in found if k == "shape"]
            assert Counter(zip(colours, shapes, strict=True)) == truth, (text, row["objects"])


def test_stated_relations_are_true(tiny_synthetic):
    checked = 0
    for row in _all_rows(tiny_synthetic):
        objects = row["objects"]
        for text in row["captions"]:
            found = synthetic.mentions(text)
            relations = [v for k, v in found if k == "relation"]
            if not relations:
                continue
            colours = [v for k, v in found if k == "colour"]
            pairs = list(zip(colours, [v for k, v in found if k == "shape"], strict=True))
            # the relation links the first two objects mentioned
            a, b = (next(o for o in objects if (o["colour"], o["shape"]) == p) for p in pairs[:2])
            assert relations == [synthetic.relation(a, b)], (text, objects)
            checked += 1
    assert checked > 20


def test_captions_vary_but_the_canonical_wording_dominates():
    rng = np.random.default_rng(0)
    scenes = [synthetic.sample_scene(rng) for _ in range(300)]
    captions = [synthetic.caption(rng, s) for s in scenes for _ in range(5)]
    text = "\n".join(captions)
    count = lambda phrase: len(re.findall(rf"\b{phrase}\b", text))  # noqa: E731
    for kind_value, synonyms in synthetic.SYNONYMS.items():
        if kind_value[0] in ("colour", "shape") and len(synonyms) > 1:
            assert count(synonyms[0]) > count(synonyms[1]) > 0, kind_value
    per_scene = [len(set(captions[i : i + 5])) for i in range(0, len(captions), 5)]
    assert np.mean(per_scene) > 3.5, "five references per scene should mostly differ"


def test_relations_only_between_clearly_separated_objects():
    rng = np.random.default_rng(1)
    for _ in range(500):
        scene = synthetic.sample_scene(rng)
        looks = {(o.colour, o.shape) for o in scene.objects}
        assert len(looks) == len(scene.objects), "objects in a scene look different"
        for a in scene.objects:
            for b in scene.objects:
                if a is b:
                    continue
                gap = max(abs(a.x - b.x), abs(a.y - b.y))
                reach = (synthetic.DIAMETER[a.size] + synthetic.DIAMETER[b.size]) / 2
                assert gap > reach, "objects never overlap"


def test_match_task_is_balanced_and_negatives_change_one_attribute():
    rng = np.random.default_rng(2)
    labels, kinds = [], Counter()
    for _ in range(2000):
        scene = synthetic.sample_scene(rng)
        text, label, kind = synthetic.match_pair(rng, scene)
        labels.append(label)
        kinds[kind] += 1
        truth = Counter((o.colour, o.shape, o.size) for o in scene.objects)
        found = synthetic.mentions(text)
        said = Counter(
            zip(
                [v for k, v in found if k == "size"],
                [v for k, v in found if k == "colour"],
                [v for k, v in found if k == "shape"],
                strict=True,
            )
        )
        said = Counter({(c, s, z): n for (z, c, s), n in said.items()})
        if label == 1:
            assert said == truth, text
        elif kind in ("colour", "shape", "size"):
            assert said != truth and sum(said.values()) == sum(truth.values()), text
        else:  # relation: same objects, wrong relation
            assert said == truth and len(scene.objects) >= 2, text
    assert abs(np.mean(labels) - 0.5) < 0.04
    assert set(kinds) == set(synthetic.MATCH_KINDS)


def test_caption_alone_does_not_predict_the_match_label():
    """Bag-of-words logistic regression on the match caption stays near chance."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    pairs = [synthetic.match_pair(rng, synthetic.sample_scene(rng)) for _ in range(4000)]
    texts, labels = [p[0] for p in pairs], np.array([p[1] for p in pairs])
    vec = CountVectorizer(ngram_range=(1, 2)).fit(texts[:3000])
    model = LogisticRegression(max_iter=2000).fit(vec.transform(texts[:3000]), labels[:3000])
    accuracy = model.score(vec.transform(texts[3000:]), labels[3000:])
    assert accuracy < 0.58


def test_audio_depends_on_the_scene():
    rng = np.random.default_rng(4)
    scene = synthetic.sample_scene(rng)
    other = synthetic._with(
        scene, 0, shape=next(s for s in synthetic.SHAPES if s != scene.objects[0].shape)
    )
    same = synthetic.sound(scene, np.random.default_rng(9))
    changed = synthetic.sound(other, np.random.default_rng(9))
    spectrum = lambda w: np.abs(np.fft.rfft(w))  # noqa: E731
    assert np.abs(spectrum(same) - spectrum(changed)).sum() > 0.2 * spectrum(same).sum()


def test_interrupted_generation_leaves_no_finished_folder(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.make_sample

    def failing(job):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synthetic, "make_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "ds", n=10, image_size=32, workers=1)
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []


def test_records_are_written_as_scenes_are_made(tmp_path, monkeypatch):
    """Streaming, not a list of every record first: when scene 6 is made, the five before it
    have gone to their split's metadata.jsonl (what keeps 100,000 scenes' memory flat)."""
    real_sample, real_dumps = synthetic.make_sample, json.dumps
    dumped, seen = [], []

    def watching(job):
        if job.index == 5:
            seen.append(len(dumped))
        return real_sample(job)

    def counting(value, **options):
        dumped.append(value)
        return real_dumps(value, **options)

    monkeypatch.setattr(synthetic, "make_sample", watching)
    monkeypatch.setattr(synthetic.json, "dumps", counting)
    synthetic.generate(tmp_path / "ds", n=20, image_size=32, audio=False, video=False, workers=1)
    assert seen == [5]


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        synthetic.generate(tmp_path / "x", n=0)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate(tmp_path / "x", n=2, image_size=8)


def test_lexicon_maps_every_surface_form():
    assert synthetic.LEXICON["crimson"] == ("colour", "red")
    assert synthetic.LEXICON["box"] == ("shape", "square")
    assert synthetic.LEXICON["to the left of"] == ("relation", "left")
    kinds = {k for k, _ in synthetic.LEXICON.values()}
    assert kinds == {"colour", "shape", "size", "relation"}
    assert {v for k, v in synthetic.LEXICON.values() if k == "shape"} == set(synthetic.SHAPES)
    assert {v for k, v in synthetic.LEXICON.values() if k == "colour"} == set(synthetic.COLOURS)
    assert synthetic.mentions("a big crimson box to the left of a tiny lemon disc") == [
        ("size", "large"),
        ("colour", "red"),
        ("shape", "square"),
        ("relation", "left"),
        ("size", "small"),
        ("colour", "yellow"),
        ("shape", "circle"),
    ]


def test_default_dataset_is_generated_once_and_reused():
    from mmlab.core import workspace

    stale = (
        workspace.data_dir()
        / f".synthetic-v{synthetic.GENERATOR_VERSION}-n6-s1-i32-noaudio-novideo.abc.tmp"
        / "x"
    )
    stale.mkdir(parents=True)  # what a killed generation leaves
    first = synthetic.default_dataset(n=6, seed=1, image_size=32, audio=False, video=False)
    stamp = (first / synthetic.INFO_FILE).stat().st_mtime_ns
    again = synthetic.default_dataset(n=6, seed=1, image_size=32, audio=False, video=False)
    assert again == first and (first / synthetic.INFO_FILE).stat().st_mtime_ns == stamp
    row = _rows(first)[0]
    assert "audio" not in row and "video" not in row
    assert not stale.parent.exists()


def test_more_match_pairs_come_from_the_rows_own_scene(tiny_synthetic):
    for row in _all_rows(tiny_synthetic):
        scene = synthetic.scene_from_row(row)
        assert [o.as_dict() for o in scene.objects] == row["objects"]
        pairs = synthetic.more_match_pairs(row, 6, seed=1)
        assert pairs == synthetic.more_match_pairs(row, 6, seed=1)
        for text, label, kind in pairs:
            said = {(c, s) for (k1, c), (k2, s) in _pairs(synthetic.mentions(text))}
            truth = {(o["colour"], o["shape"]) for o in row["objects"]}
            if label == 1 or kind in ("size", "relation"):
                assert said == truth, (text, row["objects"])
            else:
                assert said != truth


def _pairs(found):
    colours = [m for m in found if m[0] == "colour"]
    shapes = [m for m in found if m[0] == "shape"]
    return zip(colours, shapes, strict=True)


def test_a_script_without_a_main_guard_gets_an_error_not_a_hang(tmp_path):
    """Spawned generation workers re-import the main script; one that generates data at top
    level used to wait forever on the lock its parent held."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "from mmlab.data import synthetic\n"
        "synthetic.default_dataset(n=80, image_size=32, audio=False, video=False, workers=2)\n"
    )
    env = {**__import__("os").environ, "MMLAB_HOME": str(tmp_path / "ws")}
    # the timeout only turns a regression (a hang) into a failure; it bounds nothing normal
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode != 0
    assert "if __name__ == '__main__':" in done.stderr
