"""Training on several processes: real torch.distributed process groups (gloo on the CPU).

The bar: 2 processes on the same global batch follow the loss curve of 1 process, within
TOLERANCE (the largest absolute difference of a per-epoch loss, float32). Only the order of
the sums differs: the global batch's words are summed in two parts and DDP adds the two
processes' gradients. Dropout is off in these runs (and the masked words of
grid_cross_attention): their draws come from each process's own random stream, so with them
the two runs would differ by their draws, equally likely but not the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
import torch

from mmlab import captioning, features, fusion, tracking
from mmlab.captioning import GridEncoder, TrainConfig
from mmlab.captioning.train import _batches
from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary
from mmlab.fusion import InputSpec
from mmlab.train import distributed

TOLERANCE = 1e-4
SMALL = dict(embed_dim=32, hidden_dim=64, attention_dim=32, dropout=0.0)


@pytest.fixture(scope="module")
def tiny(tiny_synthetic):
    ds = load_dataset(str(tiny_synthetic))
    vocab = Vocabulary.build(ds["train"]["captions"])
    extractor = features.create(
        "image", "small_cnn", image_size=64, kind="grid", layer="mid", device="cpu"
    )
    splits = {
        s: captioning.caption_data(ds, s, extractor, GridEncoder(extractor), vocab)
        for s in ("train", "validation")
    }
    return vocab, extractor, splits


def test_each_global_batch_is_split_over_the_processes_with_weights_of_its_share(tiny):
    _, _, splits = tiny
    train = splits["train"]
    one = list(_batches(train, 12, torch.Generator().manual_seed(0)))
    shares = [
        list(_batches(train, 12, torch.Generator().manual_seed(0), distributed.Group(r, 3, None)))
        for r in range(3)
    ]
    assert len(one) == len(shares[0]) == len(shares[2])  # the last batch has more than 3 rows
    for whole, parts in zip(one, zip(*shares, strict=True), strict=True):
        tokens = whole[1]
        assert sum(len(p[1]) for p in parts) == len(tokens)  # every caption once
        assert sum(p[2][1] for p in parts) == pytest.approx(3)  # caption shares, times 3
        assert sum(p[2][0] for p in parts) == pytest.approx(3)  # word shares, times 3
        words = [int(p[1][:, 1:].ne(0).sum()) for p in parts]
        assert [p[2][0] for p in parts] == pytest.approx([3 * w / sum(words) for w in words])


def test_processes_must_be_a_positive_count():
    with pytest.raises(ValueError, match="processes"):
        TrainConfig(processes=0)
    with pytest.raises(ValueError, match="processes"):
        fusion.TrainConfig(processes=0)


@pytest.mark.slow
def test_two_gloo_processes_train_the_captioner_as_one_does(tiny):
    """The notebook's way in: `TrainConfig(processes=2)` starts the processes itself, and
    rank 0's epochs are logged to this process's MLflow run."""
    vocab, extractor, splits = tiny
    results = {}
    for processes in (1, 2):
        captioner = captioning.build("lstm_attention", GridEncoder(extractor), vocab, **SMALL)
        # 190 captions in batches of 12: shares of unequal words, and a last batch of 10
        config = TrainConfig(
            epochs=2,
            batch_size=12,
            lr=3e-3,
            attention_penalty=0.1,
            sample_images=2,
            metric_tokenizer="python",
            processes=processes,
        )
        run = tracking.start(notebook="03_caption_training", params={"processes": processes})
        result = captioning.train_captioner(
            captioner, splits["train"], splits["validation"], config, captioning.log_epoch
        )
        tracking.finish()
        results[processes] = result.history, run.info.run_id
    (one, _), (two, run_id) = results[1], results[2]
    for column in ("train_loss", "val_loss"):
        assert (one[column] - two[column]).abs().max() < TOLERANCE, column
    assert one["train_loss"].iloc[-1] < one["train_loss"].iloc[0]  # it did learn
    history = mlflow.MlflowClient().get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]  # each epoch once, from rank 0
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        list(two["train_loss"])
    )


def _token_split(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 11, (n, 7), generator=g)
    ids[: n // 2, 5:] = 0  # some captions padded
    image = torch.randn(n, 5, 3, 4, generator=g)
    return fusion.Split({"image": image, "text": ids}, (image[:, 0, 0, 0] > 0).long())


@pytest.mark.slow
def test_two_gloo_processes_train_grid_cross_attention_as_one_does():
    specs = {"image": InputSpec("grid", 5, (3, 4)), "text": InputSpec("ids", 11, pad_id=0)}
    train, validation = _token_split(90, 0), _token_split(32, 1)  # a last batch of 26
    histories = {}
    for processes in (1, 2):
        torch.manual_seed(0)
        model = fusion.create("grid_cross_attention", specs, hidden=16, dropout=0.0, masked_words=0)
        config = fusion.TrainConfig(epochs=3, batch_size=32, processes=processes)
        histories[processes] = fusion.train_fusion(model, train, validation, config).history
    for key in ("train_loss", "val_loss"):
        one, two = histories[1][key], histories[2][key]
        assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < TOLERANCE, key


@pytest.mark.slow
def test_under_torchrun_only_rank_0_creates_an_mlflow_run(tiny_synthetic, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mmlab.captioning.ddp",
        "--dataset",
        str(tiny_synthetic),
        "--image-encoder",
        "small_cnn",
        "--image-size",
        "64",
        "--decoder",
        "lstm_attention",
        "--decoder-options",
        '{"embed_dim": 32, "hidden_dim": 64, "attention_dim": 32}',
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--metric-tokenizer",
        "python",
        "--registered-model",
        "",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["processes"] == "2"
    assert run.data.tags["mmlab.launcher"] == "torchrun"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_cider")]
    assert sorted(steps) == [1, 2]  # each epoch logged once
    assert run.data.metrics["best_val_cider"] >= 0  # the run went on to its end on rank 0
