"""Data: the embedded synthetic dataset, loaders for real formats (one schema), the content
fingerprint, and the captioning tokenizer/vocabulary (`mmlab.data.text`)."""

from mmlab.data.fingerprinting import fingerprint
from mmlab.data.loaders import CAPTION_COLUMNS, DataError, LoadReport, load_dataset
from mmlab.data.synthetic import default_dataset, scene_objects

__all__ = [
    "CAPTION_COLUMNS",
    "DataError",
    "LoadReport",
    "default_dataset",
    "fingerprint",
    "load_dataset",
    "scene_objects",
]
