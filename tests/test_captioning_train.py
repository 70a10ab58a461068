"""Training, encoders and the logged model on the tiny embedded dataset (real cache, real MLflow)."""

from __future__ import annotations

import mlflow
import pytest
import torch

from mmlab import captioning, features, tracking
from mmlab.captioning import CaptionData, GridEncoder, TrainConfig
from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary
from mmlab.tracking import models

torch.set_num_threads(2)
SMALL = dict(embed_dim=32, hidden_dim=64, attention_dim=32)


@pytest.fixture(scope="module")
def tiny(tiny_synthetic):
    ds = load_dataset(str(tiny_synthetic))
    vocab = Vocabulary.build(ds["train"]["captions"])
    extractor = features.create(
        "image", "small_cnn", image_size=64, kind="grid", layer="mid", device="cpu"
    )
    encoder = GridEncoder(extractor)
    splits = {
        s: captioning.caption_data(ds, s, extractor, encoder, vocab)
        for s in ("train", "validation", "test")
    }
    return ds, vocab, extractor, splits


@pytest.fixture(scope="module")
def trained(tiny):
    """A captioner trained for two epochs inside an MLflow run of notebook 03."""
    ds, vocab, extractor, splits = tiny
    captioner = captioning.build("lstm_attention", GridEncoder(extractor), vocab, **SMALL)
    config = TrainConfig(
        epochs=2, batch_size=16, lr=3e-3, sample_images=3, metric_tokenizer="python"
    )
    run = tracking.start(notebook="03_caption_training", params={"test": "trained"})
    result = captioning.train_captioner(
        captioner, splits["train"], splits["validation"], config, on_epoch=captioning.log_epoch
    )
    info = captioning.log_captioner(captioner, registered_model_name="mmlab-captioner")
    tracking.finish()
    return captioner, result, run.info.run_id, info.model_uri


def test_caption_data_reads_grids_from_the_feature_cache(tiny):
    ds, vocab, extractor, splits = tiny
    train = splits["train"]
    assert train.inputs.shape == (len(ds["train"]), extractor.dim, 4, 4)
    assert len(train.tokens) == 5 * len(ds["train"])  # every reference caption is a sample
    assert train.tokens[0, 0] == vocab.start_id
    assert vocab.decode(train.tokens[0]) == " ".join(ds["train"][0]["captions"][0].lower().split())
    again = captioning.caption_data(ds, "train", extractor, GridEncoder(extractor), vocab)
    torch.testing.assert_close(again.inputs, train.inputs)


def test_fit_logs_every_epoch_and_keeps_the_best_weights(tiny, trained):
    _, _, _, splits = tiny
    captioner, result, run_id, _ = trained
    history = result.history
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_bleu4", "val_cider"} <= set(history)
    assert result.best_score == history["val_cider"].max()
    assert result.best_epoch == int(history["epoch"][history["val_cider"].idxmax()])
    scores, _ = captioning.score_captions(captioner, splits["validation"], tokenizer="python")
    assert scores["cider"] == pytest.approx(result.best_score, abs=1e-6)  # best state restored
    run = mlflow.MlflowClient(tracking.ensure_store()).get_run(run_id)
    steps = mlflow.MlflowClient().get_metric_history(run_id, "val_cider")
    assert sorted(m.step for m in steps) == [1, 2]
    assert "train_loss" in run.data.metrics and "val_bleu4" in run.data.metrics
    tables = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "val_captions")]
    assert tables == ["val_captions/epoch_01.csv", "val_captions/epoch_02.csv"]


def test_training_lowers_the_loss(tiny):
    _, vocab, extractor, splits = tiny
    captioner = captioning.build(
        "transformer", GridEncoder(extractor), vocab, d_model=32, ff_dim=64
    )
    config = TrainConfig(epochs=3, batch_size=16, lr=3e-3, metric_tokenizer="python", patience=5)
    history = captioning.train_captioner(
        captioner, splits["train"], splits["validation"], config
    ).history
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


@pytest.mark.parametrize("form", ["run_id", "runs_uri", "models_uri", "latest"])
def test_load_captioner_from_mlflow_captions_like_the_original(tiny, trained, form):
    ds, _, _, _ = tiny
    captioner, _, run_id, models_uri = trained
    source = {
        "run_id": run_id,
        "runs_uri": f"runs:/{run_id}/model",
        "models_uri": models_uri,
        "latest": models.model_uri("latest"),
    }[form]
    loaded = captioning.load_captioner(source)
    images = ds["test"]["image"][:4]
    out = loaded.decode(images, beam_size=3)
    assert out.captions == captioner.caption(images, beam_size=3)
    for words, alpha in zip(out.words, out.attention, strict=True):
        assert alpha.shape == (len(words), *loaded.grid_size)


def test_saved_folder_loads_and_bad_sources_are_explained(tiny, trained, tmp_path):
    ds, _, _, _ = tiny
    captioner, _, _, _ = trained
    folder = captioning.saving.save_checkpoint(captioner, tmp_path / "captioner")
    images = ds["test"]["image"][:2]
    assert captioning.load_captioner(folder).caption(images) == captioner.caption(images)
    with pytest.raises(FileNotFoundError, match="is not a model: expected a run id"):
        captioning.load_captioner(tmp_path / "nothing-here")


def test_decoding_from_cached_grids_matches_decoding_images(tiny, trained):
    ds, _, _, splits = tiny
    captioner, _, _, _ = trained
    from_grids = captioner.decode_grids(splits["test"].inputs, beam_size=2)
    from_images = captioner.decode(ds["test"]["image"], beam_size=2)
    assert from_grids.captions == from_images.captions
    table, decoded = captioning.compare_decodings(
        captioner,
        splits["test"],
        (1, 2),
        tokenizer="python",
        objects=dict(zip(splits["test"].ids, ds["test"]["objects"], strict=True)),
    )
    assert list(table.index) == [1, 2]
    assert {"bleu4", "cider", "object_precision", "mean_log_prob"} <= set(table.columns)
    assert captioning.test_metrics(table, 2)["test_cider"] == table.loc[2, "cider"]


def test_encoder_trains_only_its_top_stages(tiny):
    _, _, extractor, _ = tiny
    encoder = GridEncoder(extractor, train_stages=1).train()
    stages = list(encoder.stages)
    assert all(not p.requires_grad for s in stages[:-1] for p in s.parameters())
    assert all(p.requires_grad for p in stages[-1].parameters())
    assert not stages[0].training and stages[-1].training  # frozen BatchNorm stays in eval
    pixels = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    encoder(pixels).sum().backward()
    assert all(p.grad is not None for p in stages[-1].parameters())
    with pytest.raises(ValueError, match="train_stages"):
        GridEncoder(extractor, train_stages=99)


def test_an_encoder_that_trains_learns_from_pixels(tiny):
    ds, vocab, extractor, _ = tiny
    fresh = features.create("image", "small_cnn", image_size=64, kind="grid", layer="mid", seed=1)
    encoder = GridEncoder(fresh, train_stages="all")
    train = captioning.caption_data(ds, "train", fresh, encoder, vocab)
    val = captioning.caption_data(ds, "validation", fresh, encoder, vocab)
    assert train.inputs.dtype == torch.uint8 and train.inputs.shape[1:] == (3, 64, 64)
    captioner = captioning.build("lstm_attention", encoder, vocab, **SMALL)
    before = [p.detach().clone() for p in encoder.stages[0].parameters()]
    config = TrainConfig(epochs=1, batch_size=32, metric_tokenizer="python")
    captioning.train_captioner(captioner, train, val, config)
    after = list(encoder.stages[0].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_bad_inputs_get_clear_errors(tiny):
    _, vocab, extractor, splits = tiny
    with pytest.raises(ValueError, match="one entry per image"):
        CaptionData.build(torch.zeros(2, 4, 2, 2), ["a"], [["x"]], vocab)
    with pytest.raises(ValueError, match="valid names: constant, cosine, linear"):
        TrainConfig(schedule="step")
    captioner = captioning.build("lstm_attention", GridEncoder(extractor), vocab, **SMALL)
    pixels = CaptionData.build(
        torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["a"], [["a red circle"]], vocab
    )
    with pytest.raises(ValueError, match="frozen encoder"):
        captioning.train_captioner(captioner, pixels, splits["validation"], TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="kind='grid'"):
        GridEncoder(features.create("image", "small_cnn", image_size=64))


def test_colour_channels_join_the_cached_grid_and_the_image_path_alike(tiny):
    ds, vocab, extractor, _ = tiny
    encoder = GridEncoder(extractor, colour_detail=2)
    assert encoder.dim == extractor.dim + 12
    test = captioning.caption_data(ds, "test", extractor, encoder, vocab)
    assert test.inputs.shape[1:] == (encoder.dim, *encoder.grid_size)
    red = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    red[:, 0] = 255
    colours = encoder.colour_grid(red)
    assert colours.shape == (1, 12, 4, 4)
    assert torch.all(colours[:, :4] == 2.0) and torch.all(colours[:, 4:] == -2.0)  # red sub-cells
    captioner = captioning.build("lstm_attention", encoder, vocab, **SMALL)
    from_grids = captioner.decode_grids(test.inputs, beam_size=2).captions
    assert captioner.decode(ds["test"]["image"], beam_size=2).captions == from_grids


def test_a_seeded_build_starts_from_the_same_weights_whatever_ran_before(tiny):
    """Notebook 03 builds its captioner after other work that may draw from the global RNG
    (a feature-cache miss did). The decoder's initial weights must not depend on what ran
    before, and building must leave the global RNG where it was."""
    _, vocab, extractor, _ = tiny
    first = captioning.build("transformer", GridEncoder(extractor), vocab, seed=3)
    torch.randn(1000)  # whatever ran before
    state = torch.random.get_rng_state()
    second = captioning.build("transformer", GridEncoder(extractor), vocab, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, a), b in zip(
        first.decoder.state_dict().items(), second.decoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    other = captioning.build("transformer", GridEncoder(extractor), vocab, seed=4)
    assert not torch.equal(other.decoder.fc.weight, first.decoder.fc.weight)
