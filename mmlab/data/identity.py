"""What a `dataset` parameter stands for, for the runner's resume key: the same source string
can name other data tomorrow (an edited folder), so the key is the content fingerprint."""

from __future__ import annotations


def dataset_key(source: str) -> str:
    """The embedded dataset's spec and generator version (the same spec generates the same
    bytes, so nothing is generated here); `hf:` sources as named (no network is assumed);
    anything else the content fingerprint of what `load_dataset` reads now."""
    from mmlab.data import fingerprint, loaders, synthetic

    text = str(source)
    if text == "synthetic" or text.startswith("synthetic:"):
        options = sorted(loaders.parse_synthetic(text).items())
        return f"synthetic:v{synthetic.GENERATOR_VERSION}:{options}"
    if text.startswith("hf:"):
        return text
    return fingerprint(loaders.load_dataset(text))
