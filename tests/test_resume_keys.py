"""The runner's resume key follows what `dataset` and `model` stand for, not their names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmlab import config, resume_keys, tracking
from mmlab.captioning.saving import MODEL_TAG, TRAINING_NOTEBOOK

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


def _hash(params) -> str:
    return config.parameter_hash({**params, **resume_keys.content_keys(params)})


def test_an_edited_folder_changes_the_key(tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(PHOTOS / "images", folder)
    params = {"dataset": str(folder), "epochs": 1}
    before = _hash(params)
    assert _hash(params) == before  # stable while nothing changes
    meta = folder / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    rows[0]["captions"][0] = "an astronaut in a white suit"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _hash(params) != before
    assert config.parameter_hash(params) == config.parameter_hash(dict(params))  # name unchanged


def test_synthetic_sources_key_by_spec_without_generating(tmp_path):
    keys = resume_keys.content_keys({"dataset": "synthetic:n=999999,seed=4"})
    assert keys["dataset@content"].startswith("synthetic:v")
    assert keys != resume_keys.content_keys({"dataset": "synthetic:n=999999,seed=5"})


def test_latest_model_keys_as_the_newest_trained_captioner():
    client = tracking.client()
    experiment = tracking.experiment_id(TRAINING_NOTEBOOK)
    first = client.create_run(experiment, tags={MODEL_TAG: "runs:/first/model"})
    client.set_terminated(first.info.run_id)
    params = {"model": "latest"}
    assert resume_keys.content_keys(params) == {"model@content": "runs:/first/model"}
    before = _hash(params)
    second = client.create_run(experiment, tags={MODEL_TAG: "runs:/second/model"})
    client.set_terminated(second.info.run_id)
    assert resume_keys.content_keys(params) == {"model@content": "runs:/second/model"}
    assert _hash(params) != before


def test_an_unresolvable_value_keys_as_its_error():
    keys = resume_keys.content_keys({"dataset": "no/such/folder", "other": 3})
    assert keys["dataset@content"].startswith("unresolved: DataError") and list(keys) == [
        "dataset@content"
    ]
