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
        return scores(projected_grid, hidden2, self.w.weight[0], self.w.bias)


def _blocks(rows: int, N: int, A: int) -> list[slice]:
    step = max(1, BLOCK_ELEMENTS // (N * A))
    return [slice(start, start + step) for start in range(0, rows, step)]


def scores(
    projected_grid: torch.Tensor,
    hidden2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    sigmoids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`w^T sigmoid(projected_grid + hidden2) + b` `[B, N]`, a few rows at a time: with many
    rows (beams when decoding, a batch when training) the [B, N, A] tensor outgrows the CPU
    caches, and the add, the sigmoid and the product would each go through memory. Row by row
    it is the same arithmetic, so a caption does not depend on how many others were decoded
    with it. `sigmoids` (`[B, N, A]`), when given, keeps the sigmoids for `scores_backward`."""
    B, N, A = projected_grid.shape
    out = projected_grid.new_empty(B, N)
    for block in _blocks(B, N, A):
        kept = None if sigmoids is None else sigmoids[block]
        z2 = torch.add(projected_grid[block], hidden2[block].unsqueeze(1), out=kept)
        torch.matmul(z2.sigmoid_(), weight, out=out[block])
    return out.add_(bias)


def scores_backward(
    sigmoids: torch.Tensor,
    d_scores: torch.Tensor,
    weight: torch.Tensor,
    d_projected_grid: torch.Tensor,
    d_weight: torch.Tensor,
) -> torch.Tensor:
    """Backward of `scores` from its kept sigmoids, block by block like the forward: adds the
    gradients of the projected grid and of `w` into `d_projected_grid` and `d_weight` (a
    recurrent decoder reuses both at every step) and returns the gradient of `hidden2`."""
    B, N, A = sigmoids.shape
    d_hidden2 = sigmoids.new_empty(B, A)
    scratch = sigmoids.new_empty(min(B, max(1, BLOCK_ELEMENTS // (N * A))), N, A)
    for block in _blocks(B, N, A):
        s, g = sigmoids[block], d_scores[block]
        d_weight.addmv_(s.reshape(-1, A).t(), g.reshape(-1))
        dz = torch.addcmul(s, s, s, value=-1, out=scratch[: s.size(0)])  # sigmoid' = s (1 - s)
        dz.mul_(weight).mul_(g.unsqueeze(-1))
        d_projected_grid[block] += dz
        torch.sum(dz, 1, out=d_hidden2[block])
    return d_hidden2
