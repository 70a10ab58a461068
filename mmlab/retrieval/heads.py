"""Projection heads: cached features of one modality -> a unit vector in the shared space.
`mlp` reads a pooled vector; `attention` mixes positioned tokens (grid cells or time steps)
with transformer layers and pools them with a learned query, so words can meet their cells."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmlab.core.registry import Registry
from mmlab.features.base import real_steps

# Heads take `**_`: a model passes one set of head options to the head of every modality,
# and a linear head ignores the width its attention neighbour is given.
HEADS = Registry("retrieval head")


def create(name: str, in_shape: Sequence[int], dim: int, **options) -> nn.Module:
    """Head `name` for inputs of shape `in_shape` (one item, no batch dimension)."""
    return HEADS.create(name, tuple(int(s) for s in in_shape), dim, **options)


@HEADS.register("auto")
def auto(in_shape, dim: int, **options) -> nn.Module:
    """`mlp` for a pooled vector, `attention` for a grid or a sequence."""
    return HEADS.create("mlp" if len(in_shape) == 1 else "attention", in_shape, dim, **options)


@HEADS.register("linear")
class LinearHead(nn.Module):
    def __init__(self, in_shape, dim: int, **_):
        super().__init__()
        self.proj = nn.Linear(in_shape[-1] if len(in_shape) == 1 else in_shape[0], dim)
        self.flat = len(in_shape) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x if self.flat else _tokens(x).mean(1))


@HEADS.register("mlp")
class MLPHead(nn.Module):
    def __init__(self, in_shape, dim: int, width: int = 512, dropout: float = 0.1, **_):
        super().__init__()
        if len(in_shape) != 1:
            raise ValueError(f"the mlp head reads pooled vectors [D], got item shape {in_shape}")
        self.net = nn.Sequential(
            nn.LayerNorm(in_shape[0]),
            nn.Linear(in_shape[0], width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] grid -> [B, H*W, C] tokens; [B, T, D] sequences pass through."""
    return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x


@HEADS.register("attention")
class AttentionPoolHead(nn.Module):
    def __init__(
        self,
        in_shape,
        dim: int,
        width: int = 256,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        **_,
    ):
        super().__init__()
        if len(in_shape) not in (2, 3):
            raise ValueError(
                f"the attention head reads a grid [C, H, W] or a sequence [T, D], got {in_shape}"
            )
        self.grid = len(in_shape) == 3
        channels = in_shape[0] if self.grid else in_shape[1]
        self.embed = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, width))
        if self.grid:  # 2-D positions: a row and a column embedding, added
            self.row = nn.Parameter(torch.randn(in_shape[1], 1, width) * 0.02)
            self.col = nn.Parameter(torch.randn(1, in_shape[2], width) * 0.02)
        else:
            self.pos = nn.Parameter(torch.randn(in_shape[0], width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.heads = heads
        self.kv = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def positions(self) -> torch.Tensor:
        return (self.row + self.col).flatten(0, 1) if self.grid else self.pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens(x)
        pad = None
        if not self.grid:
            # A sequence's all-zero rows are padding (the feature cache pads across batches). It
            # may be shorter than the longest seen in training (one query), or longer (cut).
            x = x[:, : self.pos.shape[0]]
            pad = ~real_steps(x)
            pad[:, 0] = False  # an empty sequence still attends to one token
        tokens = self.embed(x) + self.positions()[: x.shape[1]]
        tokens = self.norm(self.encoder(tokens, src_key_padding_mask=pad))
        k, v = self.kv(tokens).chunk(2, dim=-1)
        b, n, w = k.shape
        split = lambda t: t.view(t.shape[0], -1, self.heads, w // self.heads).transpose(1, 2)  # noqa: E731
        keep = None if pad is None else ~pad[:, None, None, :]
        pooled = F.scaled_dot_product_attention(
            split(self.query.expand(b, -1, -1)), split(k), split(v), attn_mask=keep
        )
        return self.out(pooled.transpose(1, 2).reshape(b, w))
