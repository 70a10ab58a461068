"""Faithfulness in-domain: prompts with their truth, the attribute checker trained on real images
of the embedded world, the category scores, R-precision, and FID / KID on checker features."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2.functional import to_pil_image

from mmlab.data import SceneTruthUnknown, load_dataset, synthetic_world
from mmlab.generation.checker import (
    THRESHOLDS,
    AttributeChecker,
    CheckerConfig,
    checker_for,
    decode,
    evaluate_checker,
    reading_accuracy,
    split_pixels,
    train_checker,
)
from mmlab.generation.faithfulness import (
    category_table,
    frechet_table,
    judge,
    r_precision,
    r_precision_encoded,
    r_precision_scored,
    reconstruction_ceiling,
    score_prompts,
)
from mmlab.generation.prompts import CATEGORIES, caption_prompts, prompt_suite

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
WORLD = synthetic_world()


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Real images of the embedded world at the generators' resolution, enough to train on."""
    from mmlab.data import synthetic  # the data layer's own generator, as the fixtures use it

    out = tmp_path_factory.mktemp("faithful") / "scenes"
    synthetic.generate(out, n=1000, seed=3, image_size=64, audio=False, video=False, workers=1)
    return load_dataset(out)


@pytest.fixture(scope="module")
def fit(ds):
    """A narrow checker trained briefly: enough to read well above chance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: a second thread mostly waits on the first
    try:
        config = CheckerConfig(width=16, epochs=12, batch_size=32, lr=4e-3, patience=12)
        return train_checker(ds, config)
    finally:
        torch.set_num_threads(threads)


def _scene(prompt, seed=0):
    return WORLD.arrange(
        [{"colour": c, "shape": s} for c, s in prompt.objects], prompt.relation, seed
    )


# ---------------------------------------------------------------------- prompts
def test_the_suite_is_balanced_per_category_and_seeded():
    suite = prompt_suite(WORLD, per_category=30, seed=4)
    assert Counter(p.category for p in suite) == {c: 30 for c in CATEGORIES}
    by = {c: [p for p in suite if p.category == c] for c in CATEGORIES}
    single = by["single"]
    assert set(Counter(s for p in single for _, s in p.objects).values()) == {6}
    assert set(Counter(c for p in single for c, _ in p.objects).values()) == {5}
    assert len({p.objects for p in single}) == 30  # every shape x colour once
    assert set(Counter(c for p in by["colour"] for c, _ in p.objects).values()) == {5}
    assert Counter(p.count for p in by["counting"]) == {1: 10, 2: 10, 3: 10}
    assert all(not p.relations for p in by["counting"] + by["two_objects"])
    relations = Counter(p.relation for p in by["position"])
    assert set(relations) == set(WORLD.kinds().relations)
    assert max(relations.values()) - min(relations.values()) <= 1
    for p in by["two_objects"] + by["colour_binding"] + by["position"]:
        (ca, sa), (cb, sb) = p.objects
        assert sa != sb
        assert ca != cb or p.category == "two_objects"
    firsts = Counter(p.objects[0][1] for p in by["two_objects"])
    assert set(firsts.values()) == {6}  # each shape as often named first
    assert prompt_suite(WORLD, 30, seed=4) == suite
    assert prompt_suite(WORLD, 30, seed=5) != suite


def test_every_prompt_is_true_of_its_truth_and_false_when_it_changes():
    suite = prompt_suite(WORLD, per_category=12, seed=1)
    for i, prompt in enumerate(suite):
        scene = _scene(prompt, seed=i)
        mentions, relations = WORLD.parse(prompt.text)
        assert tuple(m.look for m in mentions) == prompt.objects, prompt.text
        assert [r.relation for r in relations] == [r for _, r, _ in prompt.relations]
        assert WORLD.fits(prompt.text, scene), prompt.text
        verdict = judge(prompt, scene)
        assert verdict["correct"] == 1.0, (prompt.text, verdict)
        wrong = _changed(prompt, scene)
        assert judge(prompt, wrong)["correct"] == 0.0, (prompt.text, wrong)


def _changed(prompt, scene):
    """The scene broken in what the prompt's category tests."""
    scene = [dict(o) for o in scene]
    if prompt.category == "counting":
        return scene[:-1]
    if prompt.category == "position":
        a, b = scene
        a["x"], a["y"], b["x"], b["y"] = b["x"], b["y"], a["x"], a["y"]
        return [a, b]
    if prompt.category == "colour_binding":
        scene[0]["colour"], scene[1]["colour"] = scene[1]["colour"], scene[0]["colour"]
        return scene
    if prompt.category == "two_objects":
        return scene[:1]
    other = next(c for c in WORLD.kinds().colours if c != scene[0]["colour"])
    scene[0]["colour"] = other  # single and colour: the wrong colour
    return scene


def test_held_out_captions_become_prompts_true_of_their_images(ds):
    prompts = caption_prompts(ds, "test", n=20, seed=0)
    test = ds["test"].select(range(20))
    assert [p.image_id for p in prompts] == list(test["id"])
    assert all(p.text in caps for p, caps in zip(prompts, test["captions"], strict=True))
    per_prompt = score_prompts(prompts, test["objects"])
    assert per_prompt["correct"].eq(1.0).all()
    assert per_prompt["relation_ok"].notna().sum() > 0  # some captions state a relation


def test_the_suite_needs_a_world_that_knows_its_scenes():
    photos = load_dataset(PHOTOS / "images")
    with pytest.raises(SceneTruthUnknown, match="embedded synthetic data"):
        prompt_suite(photos)
    with pytest.raises(ValueError, match="valid names: single"):
        prompt_suite(WORLD, categories=["nonsense"])
    assert caption_prompts(photos, "train", n=2)[0].text  # captions still make prompts


# ---------------------------------------------------------------------- scores
def test_true_scenes_score_one_and_shuffled_scenes_low():
    suite = prompt_suite(WORLD, per_category=20, seed=2)
    scenes = [_scene(p, seed=i) for i, p in enumerate(suite)]
    table = category_table(score_prompts(suite, scenes))
    assert (table["accuracy"] == 1.0).all()
    assert set(table["category"]) == {*CATEGORIES, "overall"}
    shuffled = [scenes[i] for i in np.random.default_rng(0).permutation(len(scenes))]
    low = category_table(score_prompts(suite, shuffled))
    overall = low.loc[low["category"] == "overall", "accuracy"].item()
    assert overall < 0.35
    with pytest.raises(ValueError, match="one image each"):
        score_prompts(suite, scenes[:-1])


def test_r_precision_is_one_on_exact_embeddings_and_low_on_random_ones():
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(150, 16))
    assert r_precision(texts, texts) == 1.0
    pool = rng.normal(size=(300, 16))
    assert r_precision(texts, texts, pool) == 1.0
    assert r_precision(rng.normal(size=(150, 16)), texts, pool) < 0.1
    words = [f"caption {i}" for i in range(150)]

    def exact(i, candidates):
        return [float(c == words[i]) for c in candidates]

    assert r_precision_scored(exact, words) == 1.0
    with pytest.raises(ValueError, match="smaller `distractors`"):
        r_precision(texts[:50], texts[:50])


def test_a_caption_with_the_same_words_is_never_a_distractor():
    texts = np.eye(120)
    prompts = [f"p{i}" for i in range(120)]
    pool = np.eye(120)  # the pool's i-th caption is prompt i's embedding, word for word
    assert r_precision(texts, texts, pool, prompts=prompts, pool=prompts, distractors=99) == 1.0


# ---------------------------------------------------------------------- the checker
def test_the_checker_trained_briefly_reads_real_images_well_above_chance(ds, fit):
    scores = evaluate_checker(fit.checker, ds["test"])
    # chance: a colour in six, a shape in five, a count in three
    assert scores["colour"] > 0.6 and scores["shape"] > 0.5 and scores["count"] > 0.6
    assert fit.best_epoch >= 1 and fit.cpu_seconds > 0
    # the threshold calibrated on validation reads it at least as well as the default
    assert fit.checker.config.threshold in THRESHOLDS
    default = replace(fit.checker.config, threshold=CheckerConfig.threshold)
    val = split_pixels(ds["validation"], 64)
    by_default = reading_accuracy(
        decode(fit.checker.outputs(val), default), ds["validation"]["objects"]
    )
    assert fit.val["exact"] >= by_default["exact"]
    assert list(fit.history["epoch"]) == list(range(1, len(fit.history) + 1))


def test_the_checker_reads_a_hand_rendered_scene(fit):
    scene = [{"shape": "square", "colour": "blue", "size": "large", "x": 0.17, "y": 0.5}]
    image = WORLD.render(scene, image_size=64, seed=0)
    read = fit.checker.read([image])[0]
    assert [(o["colour"], o["shape"]) for o in read] == [("blue", "square")]
    assert abs(read[0]["x"] - 0.17) < 0.1 and abs(read[0]["y"] - 0.5) < 0.1
    as_tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    assert fit.checker.read(as_tensor) == [read]


def test_the_checker_saves_loads_and_gives_features(fit, ds, tmp_path):
    checker = fit.checker
    images = split_pixels(ds["test"], 64)[:8]
    loaded = AttributeChecker.load(checker.save(tmp_path / "checker"))
    assert loaded.read(images) == checker.read(images)
    features = loaded.features(images)
    assert features.shape == (8, checker.num_features)
    assert torch.allclose(features, checker.features(images))
    with pytest.raises(FileNotFoundError, match="not a saved attribute checker"):
        AttributeChecker.load(tmp_path)


def test_reading_accuracy_scores_truth_as_one():
    scenes = [_scene(p, i) for i, p in enumerate(prompt_suite(WORLD, 6, seed=0))]
    assert set(reading_accuracy(scenes, scenes).values()) == {1.0}
    assert reading_accuracy([[] for _ in scenes], scenes)["count"] == 0.0


def test_checker_scores_match_real_captions_better_than_shuffled_ones(ds, fit):
    prompts = caption_prompts(ds, "test", seed=1)
    readings = fit.checker.read(split_pixels(ds["test"], 64))
    right = score_prompts(prompts, readings)["objects_ok"].mean()
    shuffled = [readings[i] for i in np.random.default_rng(0).permutation(len(readings))]
    assert right > score_prompts(prompts, shuffled)["objects_ok"].mean() + 0.3


def test_frechet_real_vs_real_is_below_real_vs_noise(ds, fit):
    real = split_pixels(ds["validation"], 64)
    noise = torch.rand(len(real) // 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    table = frechet_table(fit.checker, noise, real, label="noise vs real")
    assert list(table["comparison"]) == ["noise vs real", "real vs real (floor)"]
    noisy, floor = table["fid"]
    assert 0 <= floor < noisy
    assert table["kid_mean"].iloc[1] < table["kid_mean"].iloc[0]
    assert table["fid_over_floor"].iloc[1] == pytest.approx(1.0)


def test_checker_for_trains_once_then_loads_from_the_cache(ds):
    config = CheckerConfig(width=8, epochs=1, batch_size=64)
    first = checker_for(ds, config)
    again = checker_for(ds, config)
    images = split_pixels(ds["test"], 64)[:4]
    assert torch.equal(first.outputs(images), again.outputs(images))
    assert again.config == first.config and first.config.shapes == WORLD.kinds().shapes


def test_r_precision_through_an_encoder_of_images_and_texts():
    """An encoder that embeds each image exactly as its own prompt (looked up by its pixels)
    ranks every prompt first; images paired with other prompts rank theirs first rarely."""
    suite = prompt_suite(WORLD, per_category=20, seed=0)
    images = torch.stack(
        [
            torch.from_numpy(np.array(WORLD.render(_scene(p, i), 64, seed=i))).permute(2, 0, 1)
            for i, p in enumerate(suite)
        ]
    )
    vectors = np.random.default_rng(0).normal(size=(len(suite), 32))
    by_text = {p.text: v for p, v in zip(suite, vectors, strict=True)}
    by_pixels = {
        np.array(image).tobytes(): by_text[p.text]
        for image, p in zip([to_pil_image(x) for x in images], suite, strict=True)
    }

    def encode(modality, items):
        if modality == "image":
            return np.stack([by_pixels[np.array(im).tobytes()] for im in items])
        return np.stack([by_text.get(t, np.zeros(32)) for t in items])

    assert r_precision_encoded(encode, images, suite, distractors=99) == 1.0
    shuffled = images[torch.as_tensor(np.random.default_rng(1).permutation(len(suite)))]
    assert r_precision_encoded(encode, shuffled, suite, distractors=99) < 0.1


def test_a_shifted_training_image_moves_its_objects_with_it():
    from mmlab.generation.checker import _shifted

    x = torch.zeros(3, 3, 64, 64)
    objs = torch.zeros(3, 8, 5)
    for i, (col, row) in enumerate([(20, 10), (40, 33), (1, 62)]):
        x[i, :, row, col] = 1.0
        objs[i, 0] = torch.tensor([1.0, (col + 0.5) / 64, (row + 0.5) / 64, 0, 0])
    moved, moved_objs = _shifted(x, objs, 0.1, torch.Generator().manual_seed(0))
    for i in range(3):
        if moved_objs[i, 0, 0] == 0:  # its centre left the image
            continue
        row, col = (moved[i, 0] == 1.0).nonzero()[0].tolist()
        assert moved_objs[i, 0, 1] * 64 == pytest.approx(col + 0.5)
        assert moved_objs[i, 0, 2] * 64 == pytest.approx(row + 0.5)
    assert moved.shape == x.shape


def _through(reconstruct):
    """A generator whose autoencoder reconstructs images with `reconstruct`."""
    from mmlab.generation.base import Generator

    class Autoencoder(torch.nn.Module):
        def forward(self, images):
            return reconstruct(images)

        reconstruct = forward

    generator = Generator(None, 64, {})
    generator.autoencoder = Autoencoder()
    generator.weight = torch.nn.Parameter(torch.zeros(()))  # where the images go: the CPU
    return generator


def test_the_ceiling_of_a_perfect_autoencoder_is_the_checker_on_real_images(ds, fit):
    test = ds["test"].select(range(40))
    ceiling = reconstruction_ceiling(fit.checker, _through(lambda x: x), test)
    real = evaluate_checker(fit.checker, test)
    assert ceiling["shape"] == pytest.approx(real["shape"], abs=0.03)
    assert ceiling["colour"] == pytest.approx(real["colour"], abs=0.03)


def test_a_blurring_autoencoder_lowers_the_ceiling(ds, fit):
    def blur(images):  # what an 8x8 latent keeps of a 64 px image, at best
        small = torch.nn.functional.avg_pool2d(images, 8)
        return torch.nn.functional.interpolate(small, scale_factor=8, mode="bilinear")

    test = ds["test"]
    ceiling = reconstruction_ceiling(fit.checker, _through(blur), test, rows=40)
    real = evaluate_checker(fit.checker, test.select(range(40)))
    assert ceiling["shape"] < real["shape"] - 0.2
