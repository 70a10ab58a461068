"""The pooled fusion methods: one vector per modality, fused (early, weighted, gated, tensor,
low-rank, late, a small transformer over modality tokens)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmlab.fusion.base import PooledFusion, head


class Unimodal(PooledFusion):
    """Baseline: one modality alone (the others are ignored)."""

    def __init__(
        self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0, modality=None
    ):
        if modality is None or modality not in specs:
            raise ValueError(f"unimodal needs modality= one of {list(specs)}, got {modality!r}")
        super().__init__(
            {modality: specs[modality]}, num_classes, hidden, dropout, modality_dropout
        )
        self.head = head(hidden, hidden, num_classes, dropout)

    def forward(self, inputs):
        return self.head(self.project(inputs)[0])


class Concat(PooledFusion):
    """Early fusion: concatenate the projected modalities."""

    def __init__(self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        self.head = head(hidden * len(specs), hidden, num_classes, dropout)

    def forward(self, inputs):
        return self.head(torch.cat(self.project(inputs), dim=-1))


class WeightedSum(PooledFusion):
    """A learned, softmax-normalised weight per modality (the same for every sample)."""

    def __init__(self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        self.logits = nn.Parameter(torch.zeros(len(specs)))
        self.head = head(hidden, hidden, num_classes, dropout)

    def forward(self, inputs):
        z = torch.stack(self.project(inputs), dim=1)  # [N, M, H]
        return self.head((self.logits.softmax(0)[None, :, None] * z).sum(1))

    def modality_weights(self, inputs):
        n = next(iter(inputs.values())).shape[0]
        return self.logits.softmax(0).expand(n, -1)


class Attention(PooledFusion):
    """Weights computed per sample from the features themselves (additive attention)."""

    def __init__(self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.head = head(hidden, hidden, num_classes, dropout)

    def _alpha(self, z: Tensor) -> Tensor:
        return self.score(z).squeeze(-1).softmax(-1)  # [N, M]

    def forward(self, inputs):
        z = torch.stack(self.project(inputs), dim=1)
        return self.head((self._alpha(z).unsqueeze(-1) * z).sum(1))

    def modality_weights(self, inputs):
        return self._alpha(torch.stack(self.project(inputs), dim=1))


class Gated(PooledFusion):
    """Gated multimodal unit (Arevalo et al., 2017), generalised to M modalities.

    h_m = tanh(W_m x_m); gates z = softmax_m(W_z [x_1..x_M]) per feature; h = sum_m z_m * h_m.
    With two modalities the softmax is exactly the paper's sigmoid gate z and 1 - z.
    """

    def __init__(self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        m = len(specs)
        self.transforms = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(m))
        self.gate = nn.Linear(hidden * m, hidden * m)
        self.head = head(hidden, hidden, num_classes, dropout)

    def _gates(self, x: list[Tensor]) -> Tensor:
        return self.gate(torch.cat(x, -1)).view(x[0].shape[0], len(x), -1).softmax(1)

    def forward(self, inputs):
        x = self.project(inputs)
        h = torch.stack(
            [torch.tanh(t(xi)) for t, xi in zip(self.transforms, x, strict=True)], dim=1
        )
        return self.head((self._gates(x) * h).sum(1))

    def modality_weights(self, inputs):
        return self._gates(self.project(inputs)).mean(-1)


def _with_one(z: Tensor) -> Tensor:
    """Append a constant 1 so products keep every unimodal and lower-order term."""
    return torch.cat([z, z.new_ones(z.shape[0], 1)], dim=-1)


class TensorFusion(PooledFusion):
    """Tensor fusion (Zadeh et al., 2017): the outer product of the [z_m, 1] vectors.

    The product has prod(d_m + 1) entries, so modalities are first reduced to `tensor_dim`
    (default: 32 for two modalities, smaller for more, keeping the product near 20k). Its cost
    grows as (d + 1)^N: with N = 4 modalities the default d = 11 gives 12^4 = 20,736 products
    per sample, and the head's first layer alone holds 20,736 x hidden weights (1.3 M at
    hidden 64), against 4 x hidden inputs for `concat`; `low_rank` computes the same kind of
    product in N x rank x (hidden + 1) x hidden weights without building it.
    """

    def __init__(
        self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0, tensor_dim=None
    ):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        m = len(specs)
        d = tensor_dim or max(2, min(32, round(20000 ** (1 / m)) - 1))
        self.reduce = nn.ModuleList(nn.Linear(hidden, d) for _ in range(m))
        self.head = head((d + 1) ** m, hidden, num_classes, dropout)

    def forward(self, inputs):
        zs = [_with_one(r(z)) for r, z in zip(self.reduce, self.project(inputs), strict=True)]
        fused = zs[0]
        for z in zs[1:]:  # batched outer product, flattened: [N, prod(d+1)]
            fused = (fused.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
        return self.head(fused)


class LowRank(PooledFusion):
    """Low-rank multimodal fusion (Liu et al., 2018): tensor fusion with rank-r factor weights.

    fused = sum_r prod_m ([z_m, 1] W_m^(r)), never building the outer product.
    """

    def __init__(
        self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0, rank: int = 8
    ):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        self.factors = nn.ParameterList(
            nn.Parameter(torch.randn(rank, hidden + 1, hidden) / math.sqrt(hidden + 1))
            for _ in specs
        )
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.head = head(hidden, hidden, num_classes, dropout)

    def forward(self, inputs):
        product = None
        for w, z in zip(self.factors, self.project(inputs), strict=True):
            part = torch.einsum("nd,rdh->nrh", _with_one(z), w)  # [N, rank, H]
            product = part if product is None else product * part
        return self.head(torch.einsum("r,nrh->nh", self.rank_weights, product) + self.bias)


class Late(PooledFusion):
    """Late fusion: a head per modality; the prediction is the average of their probabilities."""

    def __init__(self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        self.heads = nn.ModuleList(head(hidden, hidden, num_classes, dropout) for _ in specs)

    def forward(self, inputs):
        probs = [h(z).softmax(-1) for h, z in zip(self.heads, self.project(inputs), strict=True)]
        return torch.stack(probs).mean(0).clamp_min(1e-8).log()  # log of the mean: CE-ready


class CrossAttention(PooledFusion):
    """A small transformer over modality tokens (each pooled modality is one token), read out
    by the mean of its output tokens (global average pooling, as in Beyer et al. 2022's plain
    ViT), through the final LayerNorm a pre-norm encoder needs (as in ViT).

    No [CLS] token: with only two to four tokens, a [CLS] reads the modalities through one
    softmax that saturates within an epoch at the shared learning rate, each head then taking
    one modality per sample, and the match task needs both at once. The mean keeps every
    modality's residual path to the head; attention still mixes them first."""

    def __init__(
        self, specs, num_classes, hidden=128, dropout=0.1, modality_dropout=0.0, heads=4, layers=2
    ):
        super().__init__(specs, num_classes, hidden, dropout, modality_dropout)
        self.modality_embedding = nn.Parameter(torch.randn(1, len(specs), hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False
        )
        self.head = head(hidden, hidden, num_classes, dropout)

    def forward(self, inputs):
        tokens = torch.stack(self.project(inputs), dim=1) + self.modality_embedding
        return self.head(self.encoder(tokens).mean(1))
