"""The captioner as an `mlflow.pyfunc.PythonModel`: images in, captions out (`caption` column).
Over HTTP the `image` column is base64 bytes; a non-image raises INVALID_PARAMETER_VALUE, a 400."""

from __future__ import annotations

import io
import os
from pathlib import Path

import mlflow.pyfunc
from mlflow.exceptions import MlflowException

IMAGE_COLUMN = "image"


def _bad_input(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def image_values(model_input) -> list:
    """The images of a request: the `image` column of a DataFrame (else its only column), a
    Series, a list, or one value."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            return model_input[IMAGE_COLUMN].tolist()
        if len(model_input.columns) == 1:
            return model_input.iloc[:, 0].tolist()
        raise _bad_input(
            f"expected a column {IMAGE_COLUMN!r} of image bytes, got columns "
            f"{list(map(str, model_input.columns))}"
        )
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    return [model_input]


def open_image(value, row: int):
    """Encoded image bytes, a path to an image file, or a PIL image -> an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            shown = str(value) if len(str(value)) <= 80 else str(value)[:77] + "..."
            raise _bad_input(
                f"image {row}: {shown!r} is neither image bytes nor an existing image file (over "
                f"HTTP, send the file's bytes base64-encoded in the {IMAGE_COLUMN!r} column)"
            )
        source, name = path, str(path)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(bytes(value)), f"{len(value)} bytes"
    else:
        raise _bad_input(f"image {row}: expected image bytes or a path, got {type(value).__name__}")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise _bad_input(f"image {row} ({name}): not a readable image ({error})") from None


def beam_size(params: dict | None, default: int) -> int:
    value = (params or {}).get("beam_size", default)
    try:
        beam = int(value)
    except (TypeError, ValueError):
        beam = 0
    if beam < 1 or beam != value:
        raise _bad_input(f"params.beam_size: expected a whole number >= 1, got {value!r}")
    return beam


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """Loads the captioner folder logged beside it; `predict` captions a batch of images."""

    def load_context(self, context) -> None:
        from mmlab.captioning.saving import CAPTIONER_ARTIFACT, read_captioner

        device = os.environ.get("MMLAB_DEVICE", "auto")
        self.captioner = read_captioner(context.artifacts[CAPTIONER_ARTIFACT], device=device)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from mmlab.captioning.saving import DEFAULT_BEAM

        images = [open_image(v, i) for i, v in enumerate(image_values(model_input))]
        beam = beam_size(params, DEFAULT_BEAM)
        captions = self.captioner.caption(images, beam_size=beam) if images else []
        return pd.DataFrame({"caption": captions}, dtype=object)
