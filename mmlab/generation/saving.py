"""Generators in MLflow. A saved generator is a folder of plain files: `generator.json` (the
family and its options: what `create` needs), `vocab.json` and `weights.safetensors`; nothing
is pickled. The MLflow model (`mmlab-generator`) wraps the folder in a pyfunc defined from code
(`mlflow_model.py`) with a copy of `mmlab`: a `prompt` column in, an `image` column of PNG
bytes out, params `guidance`, `steps` and `seed` (the same seed gives the same images).

`load_generator(source)` reads the folder straight from the artifact store and caches it by
run or version, so `mmlab generate` never waits for MLflow's model loading; an alias (which
moves) is resolved on every call, from a local SQLite store without importing MLflow."""

from __future__ import annotations

import io
import json
from pathlib import Path

from mmlab.generation.base import Generator, create

GENERATOR = "mmlab-generator"
MODEL_ARTIFACT = "model"
FILES = "generator"  # the generator folder's key among the pyfunc's artifacts
CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "generator.json", "vocab.json", "weights.safetensors"
FORMAT_VERSION = 1
DEFAULT_ALIAS = "candidate"
DEFAULT_SOURCE = f"models:/{GENERATOR}@{DEFAULT_ALIAS}"
DEFAULT_GUIDANCE = 3.0
# What the pyfunc imports, as distributions to pin; mmlab travels as code.
REQUIREMENTS = ("mlflow", "torch", "diffusers", "pillow", "numpy", "pandas", "safetensors")


def describe(generator: Generator) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "family": generator.family,
        "options": dict(generator.options),
        "default_steps": generator.default_steps,
        # informational: never used to build
        "parameters": sum(p.numel() for p in generator.parameters()),
        "vocab_size": len(generator.vocab),
    }


def write_generator(generator: Generator, folder: str | Path) -> Path:
    """`generator.json`, `vocab.json` and `weights.safetensors` into `folder` (created)."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = generator.cpu().eval()
    (folder / CONFIG_FILE).write_text(json.dumps(describe(generator), indent=2) + "\n")
    generator.vocab.save(folder / VOCAB_FILE)
    save_model(generator, str(folder / WEIGHTS_FILE), metadata={"format": "mmlab-generator"})
    return folder


def read_generator(folder: str | Path, device: str = "cpu") -> Generator:
    """Build the generator a generator folder describes and load its weights."""
    from safetensors.torch import load_model

    from mmlab.data.text import Vocabulary

    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no {CONFIG_FILE}: not a generator folder (expected {CONFIG_FILE}, "
            f"{VOCAB_FILE} and {WEIGHTS_FILE}, as write_generator makes them)"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer mmlab (format_version too new); upgrade")
    options = dict(config["options"])
    generator = create(config["family"], Vocabulary.load(folder / VOCAB_FILE), **options)
    try:
        load_model(generator, str(folder / WEIGHTS_FILE), strict=True, device="cpu")
    except RuntimeError as error:
        raise ValueError(
            f"{folder / WEIGHTS_FILE}: the weights do not fit family {config['family']!r} as "
            f"this mmlab builds it ({str(error).splitlines()[0]}); load it with the mmlab that "
            f"saved it (the MLflow model carries a copy under code/)"
        ) from None
    return generator.to(device).eval()


# --------------------------------------------------------------------------- the MLflow model


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def signature(generator: Generator):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("binary", "image")]),
        params=ParamSchema(
            [
                ParamSpec("guidance", "double", DEFAULT_GUIDANCE),
                ParamSpec("steps", "long", generator.default_steps),
                ParamSpec("seed", "long", 0),
            ]
        ),
    )


def _model_arguments(generator: Generator, folder: Path) -> dict:
    import pandas as pd

    import mmlab

    return dict(
        python_model=str(Path(__file__).with_name("mlflow_model.py")),
        artifacts={FILES: str(write_generator(generator, folder))},
        code_paths=[str(Path(mmlab.__file__).parent)],
        signature=signature(generator),
        # MLflow draws the example once to check the model serves it: few steps keep it cheap
        input_example=(pd.DataFrame({"prompt": ["a red circle"]}), {"steps": 2}),
        pip_requirements=_requirements(),
    )


def log_generator(
    generator: Generator,
    name: str = MODEL_ARTIFACT,
    registered_model_name: str | None = GENERATOR,
    alias: str | None = DEFAULT_ALIAS,
):
    """Log the generator under the active run as a pyfunc; with `registered_model_name`,
    register a version and point `alias` at it. Returns MLflow's ModelInfo."""
    from mmlab.tracking import models

    return models.log_pyfunc(
        lambda folder: _model_arguments(generator, folder / FILES),
        name,
        registered_model_name,
        alias,
    )


def save_model(generator: Generator, path: str | Path) -> Path:
    """The generator as a local MLflow model folder, written atomically."""
    from mmlab.tracking import models

    return models.save_pyfunc(lambda folder: _model_arguments(generator, folder / FILES), path)


def _files_in(model: Path, source) -> Path:
    """The generator folder inside an MLflow model folder (or `model` if it is one)."""
    if (model / CONFIG_FILE).is_file():
        return model
    folder = model / "artifacts" / FILES
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{source!r} is not an mmlab generator (no artifacts/{FILES}/{CONFIG_FILE}); "
            f"notebook 06 logs and registers one as {GENERATOR}"
        )
    return folder


def load_generator(source: str | Path = DEFAULT_SOURCE, device: str = "cpu") -> Generator:
    """A generator from a generator folder, a local MLflow model folder, or any form
    `mmlab.tracking.models.model_uri` resolves (run id, runs:/, models:/NAME@ALIAS, ...);
    downloads are cached by run or version."""
    from mmlab.tracking import models

    path = Path(str(source)).expanduser()
    if path.is_dir():
        return read_generator(_files_in(path, source), device)
    return models.cached_files(
        source,
        GENERATOR,
        "generator",
        lambda model: _files_in(model, source),
        lambda folder: read_generator(folder, device),
        marker=CONFIG_FILE,
        missing=f"(notebook 06 registers {GENERATOR} with alias {DEFAULT_ALIAS!r})",
    )


def png_bytes(images) -> list[bytes]:
    """uint8 `[N, 3, S, S]` -> PNG files' bytes."""
    from mmlab.generation.base import to_pil

    out = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def write_pngs(images, out: str | Path, prompt: str, seed: int) -> list[Path]:
    """Each image as `out/<prompt words>-s<seed>-<i>.png`, written atomically."""
    from mmlab.core.workspace import atomic_path
    from mmlab.data.text import tokenize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "-".join(tokenize(prompt))[:60] or "image"
    paths = []
    for i, data in enumerate(png_bytes(images)):
        path = out / f"{stem}-s{seed}-{i}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        paths.append(path)
    return paths
