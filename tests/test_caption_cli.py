"""`mmlab caption IMAGE... --model URI [--beam N]` end to end: the real command in a subprocess,
on a small captioner trained here and logged to MLflow, for JPEG and PNG files of any size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmlab import features, tracking
from mmlab.captioning import (
    CaptionData,
    GridEncoder,
    TrainConfig,
    build,
    load_captioner,
    train_captioner,
)
from mmlab.captioning.saving import log_captioner, save_checkpoint
from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary


@pytest.fixture(scope="module")
def trained(tiny_synthetic, tmp_path_factory):
    """A small captioner (frozen EfficientNet-Lite0 grid, LSTM attention decoder), trained for
    two epochs, logged to MLflow as notebook 03 does and saved as a local model folder."""
    torch.manual_seed(0)
    data = load_dataset(tiny_synthetic)
    extractor = features.create(
        "image", "efficientnet_lite0", image_size=64, kind="grid", layer="mid", device="cpu"
    )
    encoder = GridEncoder(extractor)
    vocab = Vocabulary.build(data["train"]["captions"])

    def split(name):
        rows = data[name]
        with torch.no_grad():
            grids = encoder(encoder.pixels(rows["image"]))
        return CaptionData.build(grids, rows["id"], rows["captions"], vocab)

    model = build("lstm_attention", encoder, vocab, embed_dim=32, hidden_dim=64, attention_dim=32)
    train_captioner(
        model, split("train"), split("validation"), TrainConfig(epochs=2, batch_size=32)
    )
    run = tracking.start(notebook="03_caption_training", params={"purpose": "caption cli test"})
    log_captioner(model, registered_model_name="mmlab-captioner")
    tracking.finish()
    folder = save_checkpoint(model, tmp_path_factory.mktemp("model") / "captioner")
    return {"run_id": run.info.run_id, "folder": folder, "images": data["test"]["image"][:2]}


@pytest.fixture(scope="module")
def image_files(trained, tmp_path_factory):
    """A user's files: a wide RGB JPEG and a small RGBA PNG, neither at the model's size."""
    out = tmp_path_factory.mktemp("photos")
    jpeg, png = out / "wide photo.jpg", out / "small.png"
    trained["images"][0].resize((320, 200)).save(jpeg, quality=90)
    trained["images"][1].resize((48, 48)).convert("RGBA").save(png)
    return [jpeg, png]


def mmlab(*args: str) -> subprocess.CompletedProcess:
    """The installed `mmlab` command (the console script beside this Python)."""
    script = Path(sys.executable).with_name("mmlab")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mmlab.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=os.environ.copy())


def expected_captions(model, files, beam):
    return load_captioner(model).caption([Image.open(f).convert("RGB") for f in files], beam)


def test_caption_prints_one_line_per_image(trained, image_files):
    done = mmlab("caption", *map(str, image_files), "--model", f"runs:/{trained['run_id']}/model")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().split("\n")
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in image_files]
    captions = [line.split("\t")[1] for line in lines]
    assert all(captions)  # a caption for each image, whatever its size and format
    # the command's captions are the library's, with the default beam of 3
    assert captions == expected_captions(trained["run_id"], image_files, beam=3)


def test_caption_from_a_local_model_folder_with_greedy_decoding(trained, image_files):
    done = mmlab("caption", str(image_files[1]), "--model", str(trained["folder"]), "--beam", "1")
    assert done.returncode == 0, done.stderr
    caption = done.stdout.strip().split("\t")[1]
    assert [caption] == expected_captions(trained["folder"], image_files[1:], beam=1)


def test_missing_and_unreadable_images_are_clear_errors(trained, image_files, tmp_path):
    missing = tmp_path / "nope.jpg"
    done = mmlab("caption", str(image_files[0]), str(missing), "--model", trained["run_id"])
    assert done.returncode == 2 and done.stdout == ""
    assert f"{missing}: no such image file" in done.stderr
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    done = mmlab("caption", str(broken), "--model", trained["run_id"])
    assert done.returncode == 2
    assert f"{broken}: not a readable image" in done.stderr


def test_unknown_model_names_what_was_expected(image_files, tmp_path):
    done = mmlab("caption", str(image_files[0]), "--model", str(tmp_path / "no-model"))
    assert done.returncode == 2
    assert "no-model" in done.stderr and "MLmodel" in done.stderr
    assert "Traceback" not in done.stderr


def test_caption_defaults_to_the_newest_registered_model(trained, image_files):
    done = mmlab("caption", str(image_files[0]), "--beam", "1")
    assert done.returncode == 0, done.stderr
    assert [done.stdout.strip().split("\t")[1]] == expected_captions("latest", image_files[:1], 1)


def test_serve_refuses_a_model_name_that_names_nothing(trained):
    done = mmlab("serve", "--model", "models:/mmlab-captioner@nobody")
    assert done.returncode == 2
    assert "models:/mmlab-captioner@nobody names no registered model version" in done.stderr
    assert "Traceback" not in done.stderr
