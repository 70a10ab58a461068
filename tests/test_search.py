"""The searchable retrieval model end to end: a small image-text dual encoder trained on the
tiny embedded dataset, logged to MLflow as a pyfunc with its gallery, searched from a new
process by `mmlab search`, and reloaded with the same answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import torch

from mmlab import tracking
from mmlab.data import load_dataset
from mmlab.retrieval import pairs, train
from mmlab.retrieval.saving import load_searcher, log_search_model
from mmlab.retrieval.searcher import Searcher, dataset_galleries

GRID = "efficientnet_lite0:image_size=64,kind=grid,layer=mid"


@pytest.fixture(scope="module")
def logged(tiny_synthetic, tmp_path_factory):
    ds = load_dataset(tiny_synthetic)
    data = pairs.pair_data(ds, "image-text", {"image": GRID}, device="cpu")
    config = train.TrainConfig(epochs=2, batch_size=32, dim=16, width=32)
    model = train.train_retrieval(data, config).model
    searcher = Searcher(model, dataset_galleries(model, ds, "test"))
    run = tracking.start(notebook="05_cross_modal_retrieval", params={"purpose": "search test"})
    log_search_model(searcher)
    tracking.finish()
    folder = searcher.save(tmp_path_factory.mktemp("searcher") / "model")
    query = ds["test"][0]["captions"][0]
    return {
        "uri": f"runs:/{run.info.run_id}/model",
        "searcher": searcher,
        "folder": folder,
        "query": query,
        "ds": ds,
        "path": tiny_synthetic,
    }


def mmlab(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("mmlab")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mmlab.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=os.environ.copy())


def hits_of(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.strip().split("\n")]


def test_the_gallery_holds_every_test_image_and_caption(logged):
    galleries, test = logged["searcher"].galleries, logged["ds"]["test"]
    assert galleries["image"].ids == list(test["id"])
    assert all(Path(p).is_file() for p in galleries["image"].paths)
    assert len(galleries["text"].ids) == sum(len(c) for c in test["captions"])


def test_reloaded_model_and_pyfunc_give_the_same_top_k(logged):
    expected = logged["searcher"].search("text", [logged["query"]], k=3)
    for source in (logged["uri"], logged["folder"]):
        again = load_searcher(source).search("text", [logged["query"]], k=3)
        assert again["id"].tolist() == expected["id"].tolist()
    query = pd.DataFrame({"text": [logged["query"]]})
    predicted = mlflow.pyfunc.load_model(logged["uri"]).predict(query)  # k: the default 5
    expected = logged["searcher"].search("text", [logged["query"]], k=5)
    assert predicted["id"].tolist() == expected["id"].tolist()
    assert predicted["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-5)


def test_search_command_prints_the_model_top_k(logged):
    done = mmlab("search", logged["query"], "--model", logged["uri"], "-k", "3")
    assert done.returncode == 0, done.stderr
    hits = hits_of(done.stdout)
    expected = logged["searcher"].search("text", [logged["query"]], k=3)
    assert [h[0] for h in hits] == ["1", "2", "3"]
    assert [h[2] for h in hits] == expected["id"].tolist()
    assert all(Path(h[3]).is_file() for h in hits)  # image paths


def test_search_by_image_and_in_another_gallery(logged, tmp_path):
    image = tmp_path / "scene.png"
    logged["ds"]["test"][0]["image"].save(image)
    done = mmlab("search", "--image", str(image), "--model", logged["uri"], "-k", "2")
    assert done.returncode == 0, done.stderr
    assert len(hits_of(done.stdout)) == 2 and "#" in hits_of(done.stdout)[0][2]  # caption ids
    done = mmlab(
        "search",
        logged["query"],
        "--model",
        str(logged["folder"]),
        "--gallery",
        str(logged["path"]),
        "--split",
        "validation",
    )
    assert done.returncode == 0, done.stderr
    validation = set(logged["ds"]["validation"]["id"])
    assert {h[2] for h in hits_of(done.stdout)} <= validation


def test_search_errors_say_what_to_fix(logged, tmp_path):
    done = mmlab("search", "--model", logged["uri"])
    assert done.returncode == 2 and "give either a sentence or --image PATH" in done.stderr
    done = mmlab("search", "a red circle", "--model", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "cannot load a retrieval model" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("form", ["run", "alias"])
def test_a_logged_model_searches_by_text_without_transformers_or_mlflow(logged, form):
    """The model carries MiniLM in torch's own layers, a model is cached after its first
    download, and an alias is read from the SQLite store directly: a text search in a new
    process imports neither transformers nor MLflow (most of its start), and answers as the
    full encoder does."""
    uri = logged["uri"] if form == "run" else "models:/mmlab-searcher@candidate"
    load_searcher(uri)  # the first load fills the cache
    code = (
        "import sys; from mmlab.retrieval.saving import load_searcher; "
        f"s = load_searcher({uri!r}); "
        f"print(s.search('text', [{logged['query']!r}], k=3)['id'].tolist()); "
        "print(sorted(m for m in ('transformers', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr
    ids, imported = out.stdout.strip().split("\n")[-2:]
    expected = logged["searcher"].search("text", [logged["query"]], k=3)
    assert ids == str(expected["id"].tolist())
    assert imported == "[]"


def test_the_exported_text_encoder_gives_the_encoder_vectors(tmp_path):
    from mmlab.features import create
    from mmlab.features.text import ExportedMiniLM

    encoder = create("text", "minilm", device="cpu")
    texts = ["a red circle above a blue square", "green", "a very small purple triangle " * 40]
    exported = ExportedMiniLM(encoder.export(tmp_path / "minilm"))
    assert torch.allclose(exported.extract(texts), encoder.extract(texts), atol=1e-5)
