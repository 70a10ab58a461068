"""End to end (slow): `mmlab serve` answers a real JPEG photo with a caption over HTTP and a bad
request with a 4xx that explains it; plain `papermill` of a failing notebook leaves its MLflow
run FAILED with the error as a tag."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import matplotlib
import pytest
import torch
from mlflow import MlflowClient

from mmlab import captioning, features, tracking
from mmlab.captioning import GridEncoder, TrainConfig
from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary
from mmlab.tracking import models

REPO = Path(__file__).resolve().parent.parent
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real JPEG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def champion(tiny_synthetic):
    """A captioner trained for two epochs, logged and registered as notebook 03 does, then
    made champion."""
    torch.manual_seed(0)
    ds = load_dataset(str(tiny_synthetic))
    vocab = Vocabulary.build(ds["train"]["captions"])
    extractor = features.create(
        "image", "small_cnn", image_size=64, kind="grid", layer="mid", device="cpu"
    )
    splits = {
        s: captioning.caption_data(ds, s, extractor, GridEncoder(extractor), vocab)
        for s in ("train", "validation")
    }
    model = captioning.build("transformer", GridEncoder(extractor), vocab, d_model=32, ff_dim=64)
    config = TrainConfig(epochs=2, batch_size=16, metric_tokenizer="python")
    captioning.train_captioner(model, splits["train"], splits["validation"], config)
    tracking.start(notebook="03_caption_training", params={"purpose": "serving test"})
    info = captioning.log_captioner(
        model, registered_model_name=models.REGISTERED_MODEL, alias=models.CANDIDATE
    )
    tracking.finish()
    models.set_alias(models.REGISTERED_MODEL, models.CHAMPION, info.registered_model_version)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(champion):
    """`mmlab serve` (default model: models:/mmlab-captioner@champion) on 127.0.0.1."""
    port = free_port()
    script = Path(sys.executable).with_name("mmlab")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mmlab.cli"]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)], env=os.environ.copy(), start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    while process.poll() is None:  # until it answers, or dies (then the assert says so)
        try:
            with urllib.request.urlopen(f"{url}/ping") as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    assert process.poll() is None, f"mmlab serve exited with {process.returncode}"
    yield url
    os.killpg(process.pid, 15)
    process.wait()


def test_the_champion_captions_a_real_photo_over_http(server, champion):
    from PIL import Image

    image = base64.b64encode(PHOTO.read_bytes()).decode()
    payload = {"dataframe_split": {"columns": ["image"], "data": [[image]]}}
    status, body = post(f"{server}/invocations", {**payload, "params": {"beam_size": 2}})
    assert status == 200, body
    (prediction,) = body["predictions"]
    expected = champion.caption([Image.open(PHOTO).convert("RGB")], beam_size=2)
    assert prediction["caption"] == expected[0] and prediction["caption"]


@pytest.mark.parametrize(
    "value, message",
    [
        (base64.b64encode(b"this is not an image").decode(), "not a readable image"),
        ("@@not base64@@", "base64"),  # MLflow decodes the column first
    ],
)
def test_a_request_without_an_image_gets_a_4xx_that_says_why(server, value, message):
    payload = {"dataframe_split": {"columns": ["image"], "data": [[value]]}}
    status, body = post(f"{server}/invocations", payload)
    assert 400 <= status < 500, body
    assert message in body["message"]
    assert "Traceback" not in json.dumps(body)


def test_plain_papermill_of_a_failing_notebook_leaves_a_failed_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    papermill = Path(sys.executable).with_name("papermill")
    done = subprocess.run(
        [
            str(papermill),
            str(REPO / "tests/notebooks/fail.ipynb"),
            str(tmp_path / "out.ipynb"),
            "-p",
            "x",
            "41",
            "--cwd",
            str(REPO / "tests/notebooks"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode != 0 and "boom 41" in done.stderr
    client = MlflowClient(tracking.ensure_store())
    experiment = client.get_experiment_by_name("fail")
    runs = client.search_runs([experiment.experiment_id], filter_string="params.x = '41'")
    (run,) = runs
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags["mmlab.error"] == "ValueError: boom 41"
