"""Captioners in MLflow: per-epoch logging, the model as an MLflow pyfunc, loading it back.
A saved captioner is a folder of plain files: `captioner.json` (what `captioning.build`
needs), `vocab.json` and `weights.safetensors`. Loading builds today's classes and loads the
weights, so any change that keeps the parameters keeps saved models loadable; nothing is
pickled. The MLflow model wraps the folder in a pyfunc defined from code (`mlflow_model.py`)
with a copy of `mmlab`, a signature, an input example and pinned requirements."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

from mmlab.captioning.model import Captioner

MODEL_ARTIFACT = "model"
CAPTIONER_ARTIFACT = "captioner"  # the captioner folder's key among the pyfunc's artifacts
CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "captioner.json", "vocab.json", "weights.safetensors"
FORMAT_VERSION = 1
DEFAULT_BEAM = 3
# What the pyfunc imports (through mmlab.captioning), as distributions to pin.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas", "safetensors")
REQUIREMENTS += ("tqdm", "efficientnet-lite-pytorch")


def log_epoch(epoch: int, metrics: dict) -> None:
    """`train_captioner(..., on_epoch=log_epoch)`: epoch metrics, sample captions as a table."""
    from mmlab import tracking

    values = {k: v for k, v in metrics.items() if k != "samples"}
    tracking.log_metrics(values, step=epoch)
    if "samples" in metrics:
        samples = metrics["samples"]
        table = samples.assign(epoch=epoch)[["epoch", *samples.columns]]
        tracking.log_table(table, f"val_captions/epoch_{epoch:02d}.csv")


def describe(captioner: Captioner) -> dict:
    """What the model is, in plain values: what `build` needs to make it again, and its size."""
    encoder = captioner.encoder
    return {
        "format_version": FORMAT_VERSION,
        "decoder": captioner.decoder_name,
        "decoder_options": dict(getattr(captioner, "decoder_options", {})),
        "encoder": {
            "identity": dict(encoder.identity),
            "train_stages": encoder.train_stages,
            "colour_detail": encoder.colour_detail,
        },
        "max_len": captioner.max_len,
        "length_penalty": captioner.length_penalty,
        # informational: checked against the rebuilt model, never used to build it
        "grid_size": list(captioner.grid_size),
        "encoder_dim": encoder.dim,
        "image_size": encoder.image_size,
        "vocab_size": len(captioner.vocab),
        "parameters": sum(p.numel() for p in captioner.parameters()),
    }


# --------------------------------------------------------------------------- the captioner folder


def write_captioner(captioner: Captioner, folder: str | Path) -> Path:
    """`captioner.json`, `vocab.json` and `weights.safetensors` into `folder` (created)."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captioner = captioner.cpu().eval()
    (folder / CONFIG_FILE).write_text(json.dumps(describe(captioner), indent=2, default=str) + "\n")
    captioner.vocab.save(folder / VOCAB_FILE)
    # save_model drops tied copies of a tensor and stores channels-last weights contiguous
    save_model(captioner, str(folder / WEIGHTS_FILE), metadata={"format": "mmlab-captioner"})
    return folder


def _config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{folder} holds no {CONFIG_FILE}: not a captioner folder (expected {CONFIG_FILE}, "
            f"{VOCAB_FILE} and {WEIGHTS_FILE}, as write_captioner makes them)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    missing = [k for k in ("decoder", "encoder", "max_len", "length_penalty") if k not in config]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; was it written by write_captioner?")
    version = config.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this mmlab reads ({FORMAT_VERSION});"
            f" upgrade mmlab"
        )
    return config


def _encoder(spec: dict, where: Path):
    """The GridEncoder of `spec`, rebuilt without pretrained weights (the state dict has them)."""
    from mmlab import features
    from mmlab.captioning.encoder import GridEncoder

    identity = dict(spec["identity"])
    try:
        grid = dict(kind="grid", layer=identity.get("layer", "last"), weights=None, device="cpu")
        extractor = features.create(
            "image", identity["name"], image_size=identity["image_size"], **grid
        )
    except KeyError as error:
        raise ValueError(
            f"{where / CONFIG_FILE}: encoder {identity.get('name')!r}: {error}"
        ) from None
    stages, detail = spec.get("train_stages", 0), spec.get("colour_detail", 0)
    encoder = GridEncoder(extractor, train_stages=stages, colour_detail=detail)
    encoder.identity = identity  # what it was trained from (pretrained weights), not weights=None
    return encoder


def read_captioner(folder: str | Path, device: str = "cpu") -> Captioner:
    """Build the captioner a captioner folder describes and load its weights."""
    from safetensors.torch import load_model

    from mmlab.captioning import build
    from mmlab.data.text import Vocabulary
    from mmlab.features.device import resolve_device

    folder = Path(folder)
    config = _config(folder)
    vocab = Vocabulary.load(folder / VOCAB_FILE)
    encoder = _encoder(config["encoder"], folder)
    options = dict(max_len=config["max_len"], length_penalty=config["length_penalty"], seed=0)
    captioner = build(
        config["decoder"], encoder, vocab, **options, **config.get("decoder_options", {})
    )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS_FILE} (the captioner's weights)")
    try:
        load_model(captioner, str(weights), strict=True, device="cpu")
    except RuntimeError as error:  # parameter names or shapes differ from today's classes
        raise ValueError(
            f"{weights}: the weights do not fit decoder {config['decoder']!r} as this mmlab "
            f"builds it ({str(error).splitlines()[0]}); load it with the mmlab version that saved "
            f"it (the MLflow model carries a copy under code/)"
        ) from None
    return captioner.to(resolve_device(device)).eval()


# --------------------------------------------------------------------------- the MLflow model


def _requirements() -> list[str]:
    """Pinned to this environment; mmlab itself travels as code (`code_paths`)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def signature():
    """One column `image` (encoded image bytes, or a path when called in Python) in, one
    column `caption` out; `beam_size` (1 = greedy) as a parameter."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("string", "caption")]),
        params=ParamSchema([ParamSpec("beam_size", "long", DEFAULT_BEAM)]),
    )


def input_example(captioner: Captioner):
    """A small grey JPEG: MLflow stores it with the model and checks the model can serve it."""
    import pandas as pd
    from PIL import Image

    size = captioner.encoder.image_size
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="JPEG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def _model_arguments(captioner: Captioner, folder: Path) -> dict:
    import mmlab

    return dict(
        python_model=str(Path(__file__).with_name("mlflow_model.py")),
        artifacts={CAPTIONER_ARTIFACT: str(write_captioner(captioner, folder))},
        code_paths=[str(Path(mmlab.__file__).parent)],
        signature=signature(),
        input_example=input_example(captioner),
        pip_requirements=_requirements(),
    )


def log_captioner(
    captioner: Captioner,
    name: str = MODEL_ARTIFACT,
    registered_model_name: str | None = None,
    alias: str | None = None,
):
    """Log the captioner under the active run as a pyfunc model; with `registered_model_name`,
    register a version and point `alias` at it. Returns MLflow's ModelInfo."""
    from mmlab.tracking import models

    return models.log_pyfunc(
        lambda folder: _model_arguments(captioner, folder / CAPTIONER_ARTIFACT),
        name,
        registered_model_name,
        alias,
    )


def save_checkpoint(captioner: Captioner, path: str | Path) -> Path:
    """The captioner as a local MLflow model folder (written atomically); load_captioner and
    `mlflow.pyfunc.load_model` read it."""
    from mmlab.tracking import models

    return models.save_pyfunc(
        lambda folder: _model_arguments(captioner, folder / CAPTIONER_ARTIFACT), path
    )


def captioner_folder(model_dir: str | Path) -> Path:
    """The captioner folder inside a downloaded MLflow model (or `model_dir` if it is one)."""
    from mlflow.models import Model

    model_dir = Path(model_dir)
    if (model_dir / CONFIG_FILE).is_file():
        return model_dir
    flavor = Model.load(str(model_dir)).flavors.get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(CAPTIONER_ARTIFACT)
    if artifact is None:
        raise ValueError(
            f"{model_dir} is an MLflow model but not an mmlab captioner (no "
            f"{CAPTIONER_ARTIFACT!r} artifact); models saved before the pyfunc format must be "
            f"logged again from their notebook 03 run"
        )
    return model_dir / artifact["path"]


def load_captioner(source: str | Path = "latest", device: str = "auto") -> Captioner:
    """Load a captioner ready to `.caption(images)` from any source `mmlab.tracking.models.model_uri`
    accepts (run id, runs:/, models:/NAME@ALIAS, models:/NAME/VERSION, folder, "latest")."""
    from mmlab.tracking import models

    with tempfile.TemporaryDirectory() as tmp:
        return read_captioner(captioner_folder(models.download(source, tmp)), device=device)


__all__ = [
    "describe",
    "load_captioner",
    "log_captioner",
    "log_epoch",
    "read_captioner",
    "save_checkpoint",
    "write_captioner",
]
