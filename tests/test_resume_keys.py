"""The runner's resume key follows what `dataset` and `model` stand for, not their names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmlab import tracking
from mmlab.batch import config, resume_keys
from mmlab.tracking import models

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


def test_latest_model_keys_as_the_newest_registered_captioner(tmp_path):
    client = tracking.client()
    try:
        client.create_registered_model(models.REGISTERED_MODEL)
    except Exception:  # registered by an earlier test of the session
        pass

    def register() -> str:
        source = tmp_path / f"model-{len(list(tmp_path.iterdir()))}"
        source.mkdir()
        version = client.create_model_version(models.REGISTERED_MODEL, source.as_uri())
        return f"models:/{models.REGISTERED_MODEL}/{version.version}"

    first = register()
    params = {"model": "latest"}
    assert resume_keys.content_keys(params) == {"model@content": first}
    before = _hash(params)
    second = register()
    assert resume_keys.content_keys(params) == {"model@content": second}
    assert _hash(params) != before


def test_an_unresolvable_value_keys_as_its_error():
    keys = resume_keys.content_keys({"dataset": "no/such/folder", "other": 3})
    assert keys["dataset@content"].startswith("unresolved: DataError") and list(keys) == [
        "dataset@content"
    ]
