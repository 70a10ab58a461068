"""Text-to-image generators (mmlab.generation): both families train a few steps on a tiny
embedded dataset and sample images of the right shape; the same seed draws the same images;
the transformer's key-value cache changes nothing but speed; the MLflow model round-trips
through a real store; `mmlab generate` rejects bad input with a clear message."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary
from mmlab.generation import base, saving

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "diffusion": dict(unet_channels=(32, 32), text_width=32, autoencoder_width=8),
    "vq_transformer": dict(codes=16, code_dim=8, autoencoder_width=8, width=32, layers=1),
}


@pytest.fixture(scope="module")
def data(tiny_synthetic):
    ds = load_dataset(str(tiny_synthetic))
    vocab = Vocabulary.build(ds["train"]["captions"])
    train = base.generation_data(ds["train"], vocab, 32)
    validation = base.generation_data(ds["validation"], vocab, 32)
    return vocab, train, validation


@pytest.fixture(scope="module")
def trained(data):
    vocab, train, validation = data
    out = {}
    for family, options in TINY.items():
        torch.manual_seed(0)
        generator = base.create(family, vocab, image_size=32, **options)
        config = base.GenTrainConfig(autoencoder_epochs=1, prior_epochs=1, batch_size=16)
        out[family] = (generator, base.train_generator(generator, train, validation, config))
    return out


@pytest.mark.parametrize("family", sorted(TINY))
def test_each_family_trains_and_samples_images_of_the_right_shape(trained, family):
    generator, result = trained[family]
    assert len(result.autoencoder_history) == 1 and len(result.prior_history) == 1
    assert torch.isfinite(torch.tensor(result.prior_history[0]["train_loss"]))
    assert result.cpu_minutes > 0
    images = generator.generate(["a red circle", "a blue square"], guidance=3.0, steps=3)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8


@pytest.mark.parametrize("family", sorted(TINY))
def test_the_same_seed_draws_the_same_images(trained, family):
    generator, _ = trained[family]
    first = generator.generate(["a red circle"] * 2, steps=3, seed=7)
    assert torch.equal(first, generator.generate(["a red circle"] * 2, steps=3, seed=7))
    assert not torch.equal(first, generator.generate(["a red circle"] * 2, steps=3, seed=8))


def test_ddpm_ancestral_sampling_also_draws_images(trained):
    generator, _ = trained["diffusion"]
    images = generator.sample(
        generator.prompt_ids(["a red circle"]),
        1.0,
        4,
        torch.Generator().manual_seed(0),
        sampler="ddpm",
    )
    assert images.shape == (1, 3, 32, 32)


def test_the_key_value_cache_gives_the_tokens_of_full_recomputation(trained):
    generator, _ = trained["vq_transformer"]
    ids = generator.prompt_ids(["a red circle", "a green cross above a blue square"])
    cached = generator.sample_codes(ids, 3.0, torch.Generator().manual_seed(0), cache=True)
    full = generator.sample_codes(ids, 3.0, torch.Generator().manual_seed(0), cache=False)
    assert cached.shape == (2, generator.tokens)
    assert torch.equal(cached, full)


def test_bad_prompts_and_settings_raise_and_unknown_words_are_named(trained):
    generator, _ = trained["diffusion"]
    with pytest.raises(ValueError, match="empty"):
        generator.generate(["  ?! "])
    with pytest.raises(ValueError, match="guidance"):
        generator.generate(["a red circle"], guidance=-1)
    with pytest.raises(ValueError, match="steps"):
        generator.generate(["a red circle"], steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = generator.generate(["a zorblax circle"], steps=2)
    assert images.shape[0] == 1
    assert any("zorblax" in str(w.message) for w in caught)


@pytest.mark.parametrize("family", sorted(TINY))
def test_two_downsamplings_give_a_finer_grid_that_the_saved_model_keeps(data, family, tmp_path):
    vocab = data[0]
    torch.manual_seed(0)
    generator = base.create(family, vocab, image_size=32, downsamplings=2, **TINY[family])
    latents = generator.autoencoder.encoder(torch.zeros(2, 3, 32, 32))
    assert latents.shape[-2:] == (8, 8)  # 32 / 2^2; three downsamplings give 4x4
    assert generator.reconstruct(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    reloaded = saving.read_generator(saving.write_generator(generator, tmp_path / "g"))
    assert reloaded.options["downsamplings"] == 2
    assert torch.equal(
        reloaded.generate(["a red circle"], steps=2, seed=1),
        generator.generate(["a red circle"], steps=2, seed=1),
    )


def test_the_l1_gradient_objective_is_zero_on_a_perfect_copy_and_names_bad_settings():
    from mmlab.generation.autoencoder import Autoencoder, reconstruction_loss

    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert float(reconstruction_loss(images, images, "l1_gradient")) == 0.0
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    # the same L1 on the pixels, but a blur also loses the differences between neighbours
    assert reconstruction_loss(blurred, images, "l1_gradient") > torch.mean(
        (blurred - images).abs()
    )
    loss, parts = Autoencoder(4, 8, downsamplings=2, objective="l1_gradient").loss(images)
    assert torch.isfinite(loss) and "reconstruction" in parts
    with pytest.raises(ValueError, match="mse, l1_gradient"):
        Autoencoder(objective="perceptual")
    with pytest.raises(ValueError, match="multiple of 2\\^downsamplings"):
        base.create("diffusion", base_vocab(), image_size=36, downsamplings=3)


def base_vocab():
    return Vocabulary.build([["a red circle"]])


def test_unknown_family_lists_the_valid_names(data):
    with pytest.raises(KeyError, match="diffusion, vq_transformer"):
        base.create("gan", data[0])


def test_the_pyfunc_round_trips_through_a_real_mlflow_store(trained):
    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    from mmlab import tracking

    generator, _ = trained["vq_transformer"]
    tracking.start(notebook="06_text_to_image", params={"purpose": "generator test"})
    try:
        info = saving.log_generator(generator, registered_model_name="test-generator")
    finally:
        tracking.finish()
    uri = f"models:/test-generator/{info.registered_model_version}"
    model = mlflow.pyfunc.load_model(uri)
    frame = pd.DataFrame({"prompt": ["a red circle", "a blue square"]})
    out = model.predict(frame, params={"guidance": 2.0, "seed": 3})
    assert list(out.columns) == ["image"] and len(out) == 2
    import io

    assert Image.open(io.BytesIO(out["image"][0])).size == (32, 32)
    again = model.predict(frame, params={"guidance": 2.0, "seed": 3})
    assert out["image"].tolist() == again["image"].tolist()
    alias = "models:/test-generator@candidate"
    loaded = saving.load_generator(alias)
    assert torch.equal(
        loaded.generate(["a red circle"], seed=1), generator.generate(["a red circle"], seed=1)
    )
    with pytest.raises(Exception, match="guidance"):
        model.predict(frame, params={"guidance": 50.0})


def _generate(*args: str) -> subprocess.CompletedProcess:
    cli = [sys.executable, "-m", "mmlab", "generate", *args]
    return subprocess.run(cli, cwd=REPO, capture_output=True, text=True)


def test_the_cli_draws_pngs_and_names_unknown_words(trained, tmp_path):
    generator, _ = trained["diffusion"]
    folder = saving.write_generator(generator, tmp_path / "generator")
    done = _generate(
        "a zorblax red circle",
        "--model",
        str(folder),
        "-n",
        "2",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    assert "zorblax" in done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "empty"),
        (["a red circle", "--guidance", "99"], "guidance"),
        (["a red circle", "--steps", "0"], "steps"),
        (["a red circle", "-n", "0"], "at least 1"),
        (["a red circle", "--model", "/no/such/model"], "cannot load a generator"),
    ],
)
def test_the_cli_rejects_bad_input_with_a_clear_error(args, message):
    done = _generate(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_sweep_crosses_guidance_with_the_first_sampler_and_samples_the_rest_at_one_w(
    trained, tiny_synthetic
):
    from mmlab.generation import study
    from mmlab.generation.prompts import prompt_suite

    diffusion, _ = trained["diffusion"]
    samplers = [["ddim", 25], ["ddim", 50], ["ddpm", 1000]]
    swept = study.settings(diffusion, [0, 3], samplers, sampler_prompts=2)
    assert [s.label for s in swept] == ["ddim25 w=0", "ddim25 w=3", "ddim50 w=3", "ddpm1000 w=3"]
    prompts = prompt_suite(load_dataset(str(tiny_synthetic)), per_category=3, seed=0)
    categories = {p.category for p in prompts}
    assert swept[0].prompts(prompts) == prompts
    drawn = swept[-1].prompts(prompts)
    assert {p.category for p in drawn} == categories
    assert all(sum(p.category == c for p in drawn) <= 2 for c in categories)
    transformer, _ = trained["vq_transformer"]
    assert {s.sampler for s in study.settings(transformer, [0, 3], samplers)} == {"top_k"}
    with pytest.raises(ValueError, match="samplers is empty"):
        study.settings(diffusion, [3], [])
    with pytest.raises(ValueError, match="sampler_prompts must be 0"):
        study.settings(diffusion, [3], samplers, sampler_prompts=-1)
