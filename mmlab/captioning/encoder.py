"""The image side of a captioner: a grid extractor of the feature registry as an `nn.Module`.
`GridEncoder(extractor)` takes the trunk and preprocessing of any `kind="grid"` extractor.
`train_stages`: 0 (frozen, so grids can come from the cache), k (fine-tune the top k stages) or
`"all"`. `colour_detail=d` appends the image's own colours to each cell: pixels pooled to a
`(d*H) x (d*W)` map folded into `3*d*d` channels (pixel_unshuffle), an exact complement to
features that see shape better than colour."""

from __future__ import annotations

import copy

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF


class GridEncoder(nn.Module):
    def __init__(self, extractor, train_stages: int | str = 0, colour_detail: int = 0):
        super().__init__()
        if getattr(extractor, "kind", None) != "grid" or not hasattr(extractor, "module"):
            raise ValueError(
                f"GridEncoder needs an image extractor created with kind='grid', got {extractor!r}"
            )
        self.identity = dict(extractor.identity)
        self.image_size = extractor.image_size
        self.grid_size = tuple(extractor.grid_size)
        if colour_detail < 0:
            raise ValueError(f"colour_detail must be >= 0, got {colour_detail}")
        self.colour_detail = int(colour_detail)
        self.dim = extractor.dim + 3 * self.colour_detail**2
        # a copy: the extractor keeps its own module (and device) for the feature cache. Frozen,
        # its inference trunk (batch norms folded), which is exactly what the cache holds.
        frozen = train_stages == 0 and hasattr(extractor, "inference")
        trunk = extractor.inference if frozen else extractor.module
        self.stages = copy.deepcopy(trunk).to("cpu")
        self.register_buffer("mean", extractor.mean.detach().cpu().clone(), persistent=True)
        self.register_buffer("std", extractor.std.detach().cpu().clone(), persistent=True)
        n = len(self.stages)
        k = n if train_stages == "all" else int(train_stages)
        if not 0 <= k <= n:
            raise ValueError(f"train_stages must be 0..{n} or 'all', got {train_stages!r}")
        self.train_stages = k
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= n - k)
        self.train(False)

    @property
    def frozen(self) -> bool:
        return self.train_stages == 0

    def train(self, mode: bool = True):
        """Frozen stages stay in eval mode (their BatchNorm statistics must not drift)."""
        super().train(mode)
        for i, stage in enumerate(self.stages):
            stage.train(mode and i >= len(self.stages) - self.train_stages)
        return self

    def preprocess(self, image) -> torch.Tensor:
        """A PIL image -> uint8 `[3, S, S]` (resized as the extractor does)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        pixels = TF.pil_to_tensor(image.convert("RGB"))
        size = [self.image_size, self.image_size]
        return (
            TF.resize(pixels, size, antialias=True) if pixels.shape[1:] != tuple(size) else pixels
        )

    def pixels(self, images) -> torch.Tensor:
        return torch.stack([self.preprocess(im) for im in images])

    def colour_grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, 3, S, S]` -> `[B, 3*d*d, H, W]`: mean colours of d x d sub-cells, centred."""
        d, (H, W) = self.colour_detail, self.grid_size
        pooled = F.adaptive_avg_pool2d(pixels.float() / 255, (d * H, d * W))
        return (F.pixel_unshuffle(pooled, d) - 0.5) / 0.25

    def with_colours(self, grid: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The CNN grid with the colour channels appended (as is when `colour_detail=0`)."""
        if not self.colour_detail:
            return grid
        return torch.cat([grid, self.colour_grid(pixels.to(grid.device))], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, 3, S, S]` -> grid `[B, D, H, W]`; frozen stages run without autograd."""
        return self.with_colours(self.cnn(pixels), pixels)

    def cnn(self, pixels: torch.Tensor) -> torch.Tensor:
        """The extractor's trunk alone: what the feature cache stores."""
        x = (pixels.float() / 255 - self.mean) / self.std
        n_frozen = len(self.stages) - self.train_stages
        if n_frozen:
            with torch.no_grad():
                x = self.stages[:n_frozen](x)
        return self.stages[n_frozen:](x) if self.train_stages else x
