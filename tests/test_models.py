"""The captioner as an MLflow model: what is saved (no pickle), every way to name a model, the
pyfunc's images-in/captions-out face and its errors, the registry's aliases and promotion."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from mmlab import captioning, features, tracking
from mmlab.captioning import GridEncoder, load_captioner, saving
from mmlab.data import load_dataset
from mmlab.data.text import Vocabulary
from mmlab.tracking import models

torch.set_num_threads(2)
NAME = "mmlab-captioner-test"


@pytest.fixture(scope="module")
def data(tiny_synthetic):
    return load_dataset(str(tiny_synthetic))


@pytest.fixture(scope="module")
def captioner(data):
    """An untrained but deterministic captioner: saving and loading must not change a word."""
    vocab = Vocabulary.build(data["train"]["captions"])
    extractor = features.create(
        "image", "small_cnn", image_size=64, kind="grid", layer="mid", device="cpu"
    )
    encoder = GridEncoder(extractor, colour_detail=1)
    return captioning.build("transformer", encoder, vocab, d_model=32, ff_dim=64, seed=3)


@pytest.fixture(scope="module")
def folder(captioner, tmp_path_factory):
    return saving.save_checkpoint(captioner, tmp_path_factory.mktemp("saved") / "captioner")


@pytest.fixture(scope="module")
def logged(captioner):
    """Two registered versions of the same captioner, logged from a notebook-03-like run."""
    run = tracking.start(notebook="03_caption_training", params={"purpose": "models test"})
    first = saving.log_captioner(captioner, registered_model_name=NAME, alias="candidate")
    second = saving.log_captioner(captioner, name="again", registered_model_name=NAME)
    saving.log_captioner(captioner, name="default", registered_model_name=models.REGISTERED_MODEL)
    tracking.finish()
    return run.info.run_id, first, second


def jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_saved_model_is_weights_config_and_vocabulary_without_pickle(folder, captioner):
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    captioner_files = {f for f in files if f.startswith("artifacts/captioner/")}
    assert captioner_files == {
        "artifacts/captioner/captioner.json",
        "artifacts/captioner/vocab.json",
        "artifacts/captioner/weights.safetensors",
    }
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".cloudpickle"))]
    assert "code/mmlab/captioning/serving.py" in files  # mmlab travels with the model
    config = json.loads((folder / "artifacts/captioner/captioner.json").read_text())
    assert config["decoder"] == "transformer"
    assert config["decoder_options"] == {"d_model": 32, "ff_dim": 64}
    assert config["encoder"]["identity"]["name"] == "small_cnn"
    assert config["encoder"]["colour_detail"] == 1
    model = mlflow.models.Model.load(str(folder))
    pyfunc = model.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # a model from code
    assert Path(pyfunc["model_code_path"]).name == "mlflow_model.py"
    assert (folder / "mlflow_model.py").is_file()
    assert model.signature.inputs.input_names() == ["image"]
    assert model.signature.params.to_dict()[0]["name"] == "beam_size"
    requirements = (folder / "requirements.txt").read_text().split()
    names = {r.split("==")[0] for r in requirements}
    assert {"mlflow", "torch", "torchvision", "pillow", "safetensors"} <= names


def test_folder_loads_back_with_the_same_captions(folder, captioner, data):
    images = data["test"]["image"][:3]
    loaded = load_captioner(folder)
    assert loaded.caption(images, beam_size=2) == captioner.caption(images, beam_size=2)
    for name, value in captioner.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)


class RenamedEncoder(GridEncoder):
    """GridEncoder after an unrelated refactor: `colour_detail` is kept in a private `_detail`.
    An unpickled old object would lack `_detail`; a rebuilt one has it."""

    @property
    def colour_detail(self) -> int:
        return self._detail

    @colour_detail.setter
    def colour_detail(self, value: int) -> None:
        self._detail = value


def test_a_model_saved_before_a_private_attribute_was_renamed_still_loads(
    folder, captioner, data, monkeypatch
):
    monkeypatch.setattr("mmlab.captioning.encoder.GridEncoder", RenamedEncoder)
    loaded = load_captioner(folder)
    assert type(loaded.encoder) is RenamedEncoder and loaded.encoder._detail == 1
    assert "colour_detail" not in vars(loaded.encoder)
    images = data["test"]["image"][:2]
    assert loaded.caption(images) == captioner.caption(images)


def test_weights_that_do_not_fit_are_explained(folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder / "artifacts/captioner", broken)
    config = json.loads((broken / "captioner.json").read_text())
    config["decoder_options"]["d_model"] = 48
    (broken / "captioner.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weights do not fit decoder 'transformer'"):
        saving.read_captioner(broken)
    (broken / "captioner.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds no captioner.json"):
        saving.read_captioner(broken)


@pytest.mark.parametrize(
    "form", ["run_id", "runs", "logged", "version", "alias", "latest", "folder"]
)
def test_every_way_to_name_a_model_loads_it(logged, folder, captioner, data, form):
    run_id, first, second = logged
    source = {
        "run_id": run_id,
        "runs": f"runs:/{run_id}/model",
        "logged": second.model_uri,  # MLflow 3's models:/<model id>
        "version": f"models:/{NAME}/{first.registered_model_version}",
        "alias": f"models:/{NAME}@candidate",
        "latest": "latest",  # the newest version of mmlab-captioner
        "folder": str(folder),
    }[form]
    images = data["test"]["image"][:2]
    assert load_captioner(source).caption(images) == captioner.caption(images)


def test_latest_is_the_newest_version_and_bad_names_say_what_is_accepted(logged, tmp_path):
    run_id, first, second = logged
    assert int(second.registered_model_version) == int(first.registered_model_version) + 1
    assert models.latest_version(NAME).version == second.registered_model_version
    newest = models.latest_version(models.REGISTERED_MODEL).version
    assert models.model_uri("latest") == f"models:/{models.REGISTERED_MODEL}/{newest}"
    assert models.version_of(f"runs:/{run_id}/model").version == first.registered_model_version
    assert models.version_of(f"runs:/{run_id}/again").version == second.registered_model_version
    assert models.version_of(second.model_uri).version == second.registered_model_version
    with pytest.raises(FileNotFoundError, match="models:/NAME@ALIAS"):
        models.model_uri(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="models:/NAME@ALIAS or models:/NAME/VERSION"):
        models.model_uri("models:/just-a-name")
    with pytest.raises(LookupError, match="no registered model 'nobody'"):
        models.latest_version("nobody")
    with pytest.raises(LookupError):
        load_captioner(f"models:/{NAME}@no-such-alias")


def test_pyfunc_captions_bytes_and_paths_and_explains_bad_input(folder, captioner, data, tmp_path):
    model = mlflow.pyfunc.load_model(str(folder))
    images = data["test"]["image"][:2]
    path = tmp_path / "scene.png"
    images[1].save(path)
    frame = pd.DataFrame({"image": [jpeg_bytes(images[0]), str(path)]})
    out = model.predict(frame, params={"beam_size": 1})
    assert list(out.columns) == ["caption"] and len(out) == 2
    from_jpeg = Image.open(io.BytesIO(jpeg_bytes(images[0]))).convert("RGB")
    assert list(out["caption"]) == captioner.caption([from_jpeg, images[1]], beam_size=1)
    with pytest.raises(MlflowException, match=r"image 1 \(12 bytes\): not a readable image") as bad:
        model.predict(pd.DataFrame({"image": [jpeg_bytes(images[0]), b"not an image"]}))
    assert bad.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="neither image bytes nor an existing image file"):
        model.predict(pd.DataFrame({"image": [str(tmp_path / "missing.jpg")]}))
    with pytest.raises(MlflowException, match="beam_size: expected a whole number >= 1"):
        model.predict(frame, params={"beam_size": 0})


def test_champion_moves_only_to_a_better_score_on_the_same_data(logged, folder):
    _, first, second = logged
    v1, v2 = f"models:/{NAME}/{first.registered_model_version}", f"models:/{NAME}/2"
    assert models.promote(v1, "test_cider_best", 0.5, data="d1", alias="best").promoted
    worse = models.promote(v2, "test_cider_best", 0.4, data="d1", alias="best")
    assert not worse.promoted and "not beaten" in worse.reason
    other_data = models.promote(v2, "test_cider_best", 0.9, data="d2", alias="best")
    assert not other_data.promoted and "not evaluated on this data" in other_data.reason
    assert models.version_of(f"models:/{NAME}@best").version == first.registered_model_version
    assert models.promote(v2, "test_cider_best", 0.6, data="d1", alias="best").promoted
    assert models.version_of(f"models:/{NAME}@best").version == second.registered_model_version
    recorded = models.evaluations(models.version_of(v2))["test_cider_best"]
    assert recorded == {"d2": {"value": 0.9, "run_id": ""}, "d1": {"value": 0.6, "run_id": ""}}
    unregistered = models.promote(folder, "test_cider_best", 1.0, data="d1", alias="best")
    assert not unregistered.promoted and "not a registered model version" in unregistered.reason


def test_experiments_open_as_model_training_with_their_question():
    from mmlab.tracking import experiments

    experiment = tracking.client().get_experiment(tracking.experiment_id("03_caption_training"))
    assert experiment.tags[experiments.KIND_TAG] == "custom_model_development"
    question = experiment.tags.get(experiments.DESCRIPTION_TAG, "")
    assert question.startswith("Can a CNN grid encoder and an attention decoder")
