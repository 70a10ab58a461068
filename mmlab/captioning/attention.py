"""Additive (Bahdanau) attention over a grid of image features, as in Show, Attend and Tell.

    e_ti  = w^T tanh(W_e a_i + W_h h_{t-1})      a_i: the grid feature at location i
    alpha = softmax_i(e_ti)
    context = sum_i alpha_ti a_i

`W_e a` does not depend on the time step, so `project_grid` computes it once per batch and the
decoder passes the result to every step; only `W_h h` is new at each step (and the decoder
fuses it into one matmul with its other projections of `h`).
"""

from __future__ import annotations

import torch
from torch import nn


class AdditiveAttention(nn.Module):
    def __init__(self, encoder_dim: int, attention_dim: int):
        super().__init__()
        self.W_e = nn.Linear(encoder_dim, attention_dim)
        self.w = nn.Linear(attention_dim, 1)

    def project_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """`2 W_e a` for a grid `[B, N, D]`: computed once, reused at every time step (doubled
        once here rather than at every step: see `weights`)."""
        return 2 * self.W_e(grid)

    def forward(
        self, grid: torch.Tensor, projected_grid: torch.Tensor, projected_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with `projected_hidden = W_h h` `[B, A]`; return `(context [B, D], alpha [B, N])`."""
        alpha = self.weights(projected_grid, projected_hidden)
        context = torch.bmm(alpha.unsqueeze(1), grid).squeeze(1)
        return context, alpha

    def weights(self, projected_grid: torch.Tensor, projected_hidden: torch.Tensor) -> torch.Tensor:
        """`alpha [B, N]` alone, for a decoder that folds the context into a cached projection."""
        # w^T tanh(z) = 2 w^T sigmoid(2z) - sum(w), and softmax ignores the constant: the same
        # alpha, but sigmoid runs several times faster than tanh on CPU (benchmarks/).
        z2 = projected_grid + (2 * projected_hidden).unsqueeze(1)
        scores = 2 * self.w(torch.sigmoid(z2)).squeeze(2)
        return torch.softmax(scores, dim=1)
