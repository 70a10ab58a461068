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

BLOCK_ELEMENTS = 1 << 17  # 512 KiB of float32 per block: fits a core's L2 cache


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
        hidden2 = 2 * projected_hidden
        if torch.is_grad_enabled():
            z2 = projected_grid + hidden2.unsqueeze(1)
            scores = self.w(torch.sigmoid_(z2)).squeeze(2)  # in place: one [B, N, A] less
        else:
            scores = self._scores_blocked(projected_grid, hidden2)
        return torch.softmax(2 * scores, dim=1)

    def _scores_blocked(self, projected_grid: torch.Tensor, hidden2: torch.Tensor) -> torch.Tensor:
        """`w^T sigmoid(z2) + b` a few rows at a time: decoding many beams at once, the
        [B, N, A] tensor outgrows the CPU caches, so the add, the sigmoid and the product each
        went through memory. Row by row it is the same arithmetic, so a caption does not
        depend on how many others were decoded with it."""
        B, N, A = projected_grid.shape
        rows = max(1, BLOCK_ELEMENTS // (N * A))
        scores = projected_grid.new_empty(B, N)
        weight, bias = self.w.weight[0], self.w.bias
        for start in range(0, B, rows):
            block = slice(start, start + rows)
            z2 = torch.add(projected_grid[block], hidden2[block].unsqueeze(1))
            torch.matmul(z2.sigmoid_(), weight, out=scores[block])
        return scores.add_(bias)
