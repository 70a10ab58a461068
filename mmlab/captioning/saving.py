"""Captioners in MLflow: per-epoch logging, the model with its vocabulary, loading it back.

    log_captioner(captioner)                       # under the active run, artifact path "model"
    captioner = load_captioner("runs:/<run_id>/model")   # or a run id, models:/..., a folder
    captioner.caption([Image.open("photo.png")])

The whole `Captioner` (encoder trunk with its preprocessing, decoder, vocabulary) is pickled by
`mlflow.pytorch.log_model`; `vocab.json` and `captioner.json` ride along as readable extra files.
Loading needs `mmlab` installed (the pickle refers to its classes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

from mmlab.captioning.model import Captioner
from mmlab.captioning.train import EpochResult

MODEL_ARTIFACT = "model"
MODEL_TAG = "mmlab.model_uri"  # set on a run that logged a captioner: what "latest" looks for
TRAINING_NOTEBOOK = "03_caption_training"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@contextlib.contextmanager
def _quiet_mlflow():
    """No progress bars or pickle-format warning in notebook output while a model moves."""
    logger = logging.getLogger("mlflow.pytorch")
    level, bar = logger.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    logger.setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def log_epoch(result: EpochResult) -> None:
    """`fit(..., on_epoch=log_epoch)`: epoch metrics, and the sample captions as a table."""
    from mmlab import tracking

    tracking.log_metrics(result.metrics, step=result.epoch)
    tracking.log_table(result.samples, f"val_captions/epoch_{result.epoch:02d}.csv")


def describe(captioner: Captioner) -> dict:
    """What the model is, in plain values (logged as `captioner.json`)."""
    return {
        "decoder": captioner.decoder_name,
        "encoder": captioner.encoder.identity,
        "train_stages": captioner.encoder.train_stages,
        "grid_size": list(captioner.grid_size),
        "encoder_dim": captioner.encoder.dim,
        "image_size": captioner.encoder.image_size,
        "vocab_size": len(captioner.vocab),
        "max_len": captioner.max_len,
        "length_penalty": captioner.length_penalty,
        "parameters": sum(p.numel() for p in captioner.parameters()),
    }


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference would reload the model in a subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "torchvision", "pillow", "efficientnet-lite-pytorch", "mlflow"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pins


def log_captioner(captioner: Captioner, name: str = MODEL_ARTIFACT):
    """Log the captioner under the active run (`runs:/<run_id>/<name>`); returns MLflow's info."""
    import mlflow.pytorch
    from mlflow.tracking.fluent import active_run

    if active_run() is None:
        raise RuntimeError("no active MLflow run: call mmlab.tracking.start(notebook=...) first")
    from mmlab import tracking

    captioner = captioner.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow():
        vocab_path, config_path = Path(tmp) / "vocab.json", Path(tmp) / "captioner.json"
        captioner.vocab.save(vocab_path)
        config_path.write_text(json.dumps(describe(captioner), indent=2, default=str) + "\n")
        info = mlflow.pytorch.log_model(
            captioner, name=name, extra_files=[str(vocab_path), str(config_path)],
            pip_requirements=_requirements(),
            serialization_format="pickle",  # pt2 would keep only a traced forward()
        )  # fmt: skip
    tracking.set_tags({MODEL_TAG: f"runs:/{active_run().info.run_id}/{name}"})
    return info


def resolve_model(model: str = "latest") -> str:
    """`"latest"`: the newest FINISHED run of notebook 03 that logged a captioner; anything else
    goes through `model_uri` (run id, runs:/.., models:/.., local folder)."""
    if model != "latest":
        return model_uri(model)
    from mmlab import tracking

    uri = tracking.ensure_store()
    experiment = tracking.client(uri).get_experiment_by_name(TRAINING_NOTEBOOK)
    runs = [] if experiment is None else tracking.client(uri).search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=200,
    )  # fmt: skip
    for run in runs:
        if MODEL_TAG in run.data.tags:
            return run.data.tags[MODEL_TAG]
    raise LookupError(
        f"no FINISHED run of {TRAINING_NOTEBOOK} with a logged captioner in {uri}: run notebook "
        f"03 first, or pass a run id, runs:/<id>/model URI or model folder"
    )


def model_uri(source: str | Path) -> str:
    """A run id, `runs:/..`, `models:/..`, any MLflow URI, or a local model folder -> a URI."""
    text = str(source)
    if _RUN_ID.match(text):
        return f"runs:/{text}/{MODEL_ARTIFACT}"
    if "://" in text or text.startswith(("runs:/", "models:/")):
        return text
    path = Path(text).expanduser()
    if not (path / "MLmodel").is_file():
        raise FileNotFoundError(
            f"{text!r} is neither a run id, an MLflow model URI (runs:/<id>/model, models:/..) "
            f"nor a folder holding an MLmodel file"
        )
    return str(path.resolve())


def load_captioner(source: str | Path, device: str = "auto") -> Captioner:
    """Load a logged captioner ready to `.caption(images)`."""
    import mlflow
    import mlflow.pytorch

    from mmlab import tracking
    from mmlab.features.device import resolve_device

    uri = model_uri(source)
    if uri.startswith(("runs:/", "models:/")):
        mlflow.set_tracking_uri(tracking.ensure_store())
    with _quiet_mlflow():
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    if not isinstance(model, Captioner):
        raise TypeError(f"{source!r} holds a {type(model).__name__}, not an mmlab Captioner")
    return model.to(resolve_device(device)).eval()


def save_checkpoint(captioner: Captioner, path: str | Path) -> Path:
    """The captioner as a local MLflow model folder (written atomically); load_captioner reads it."""
    import mlflow.pytorch

    from mmlab.workspace import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as extra, _quiet_mlflow():
        vocab_path = Path(extra) / "vocab.json"
        captioner.vocab.save(vocab_path)
        mlflow.pytorch.save_model(
            captioner.cpu().eval(),
            str(tmp),
            extra_files=[str(vocab_path)],
            pip_requirements=_requirements(),
            serialization_format="pickle",  # pt2 would keep only a traced forward()
        )
    return path


__all__ = ["load_captioner", "log_captioner", "log_epoch", "model_uri", "save_checkpoint"]
