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
from torch.nn import functional as F

BLOCK_ELEMENTS = 1 << 17  # 512 KiB of float32 per block: fits a core's L2 cache


class AdditiveAttention(nn.Module):
    def __init__(self, encoder_dim: int, attention_dim: int):
        super().__init__()
        self.W_e = nn.Linear(encoder_dim, attention_dim)
        self.w = nn.Linear(attention_dim, 1)

    def project_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """`2 W_e a` for a grid `[B, N, D]`: computed once, reused at every time step (doubled
        once here rather than at every step: see `weights`; the `[A, D]` weights doubled,
        not the `[B, N, A]` output, which is the same in floating point)."""
        return F.linear(grid, 2 * self.W_e.weight, 2 * self.W_e.bias)

    def forward(
        self, grid: torch.Tensor, projected_grid: torch.Tensor, projected_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with `projected_hidden = W_h h` `[B * K, A]` (K rows, e.g. beams, per grid
        row); return `(context [B * K, D], alpha [B * K, N])`."""
        alpha = self.weights(projected_grid, projected_hidden)
        return attend(alpha, grid), alpha

    def weights(self, projected_grid: torch.Tensor, projected_hidden: torch.Tensor) -> torch.Tensor:
        """`alpha [B * K, N]` alone, for a decoder that folds the context into a cached
        projection. Rows `b * K .. b * K + K - 1` of `projected_hidden` look at grid row b: the
        beams of one image share its grid instead of each reading a copy."""
        # w^T tanh(z) = 2 w^T sigmoid(2z) - sum(w), and softmax ignores the constant: the same
        # alpha, but sigmoid runs several times faster than tanh on CPU (benchmarks/).
        B, N, A = projected_grid.shape
        hidden2 = (2 * projected_hidden).view(B, -1, A)
        if torch.is_grad_enabled():
            z2 = projected_grid.unsqueeze(1) + hidden2.unsqueeze(2)
            e = self.w(torch.sigmoid_(z2)).squeeze(3)  # in place: one [B, K, N, A] less
        else:
            e = scores(projected_grid, hidden2, self.w.weight[0], self.w.bias)
        return torch.softmax(2 * e.view(-1, N), dim=1)


def attend(alpha: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`sum_i alpha_ti values_i`: `alpha [B * K, N]` (K rows per row of `values [B, N, D]`)."""
    B, N, D = values.shape
    return torch.bmm(alpha.view(B, -1, N), values).view(-1, D)


def block_elements() -> int:
    """Elements per block: `BLOCK_ELEMENTS` on one thread. With more, every elementwise
    operation also pays the thread pool's fork and join, and blocks of 2 x threads times that
    (1 MiB per thread) make fewer of them. Measured against `BLOCK_ELEMENTS` on 2 threads:
    training 1.04-1.08x, batched beam search 1.11-1.16x; on one thread the larger blocks
    were 4% slower."""
    threads = torch.get_num_threads()
    return BLOCK_ELEMENTS if threads == 1 else 2 * threads * BLOCK_ELEMENTS


def _block_rows(elements_per_row: int) -> int:
    return max(1, block_elements() // elements_per_row)


def _blocks(rows: int, elements_per_row: int) -> list[slice]:
    step = _block_rows(elements_per_row)
    return [slice(start, start + step) for start in range(0, rows, step)]


def _sigmoids(projected_grid, hidden, block: slice, out: torch.Tensor) -> torch.Tensor:
    """`sigmoid(projected_grid + hidden)` of one block of rows, into `out`: `[rows, K, N, A]`
    from `hidden [B, K, A]`. `scores` and `scores_backward` (which computes them again) share
    it, so the backward differentiates exactly what the forward computed."""
    rows = projected_grid[block].size(0)
    return torch.add(projected_grid[block].unsqueeze(1), hidden[block].unsqueeze(2),
                     out=out[:rows]).sigmoid_()  # fmt: skip


def scores(
    projected_grid: torch.Tensor, hidden2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """`w^T sigmoid(projected_grid + hidden2) + b`, a few grid rows at a time: with many
    rows (beams when decoding, a batch when training) the [B, K, N, A] tensor outgrows the CPU
    caches, and the add, the sigmoid and the product would each go through memory. Row by row
    it is the same arithmetic, so a caption does not depend on how many others were decoded
    with it. `hidden2` is `[B, A]` (scores `[B, N]`) or `[B, K, A]` (scores `[B, K, N]`)."""
    B, N, A = projected_grid.shape
    hidden = hidden2 if hidden2.dim() == 3 else hidden2.unsqueeze(1)
    K = hidden.size(1)
    out = projected_grid.new_empty(B, K, N)
    scratch = projected_grid.new_empty(min(B, _block_rows(K * N * A)), K, N, A)
    for block in _blocks(B, K * N * A):
        torch.matmul(_sigmoids(projected_grid, hidden, block, scratch), weight, out=out[block])
    out.add_(bias)
    return out if hidden2.dim() == 3 else out.squeeze(1)


def scores_backward(
    projected_grid: torch.Tensor,
    hidden2: torch.Tensor,
    d_scores: torch.Tensor,
    d_projected_grid_over_w: torch.Tensor,
    d_weight: torch.Tensor,
) -> torch.Tensor:
    """Backward of `scores` (`hidden2` `[B, A]`), block by block like the forward. The
    sigmoids are computed again, in cache: keeping them from the forward would send
    `[B, N, A]` per step through memory twice (and page-fault it in). Adds into
    `d_weight` and into `d_projected_grid_over_w` (a recurrent decoder reuses both at every
    step): the latter is the projected grid's gradient without its factor `w` (elementwise
    over A), which the caller applies once after its last step instead of once per step.
    Returns the gradient of `hidden2` without its factor `w` likewise."""
    B, N, A = projected_grid.shape
    d_hidden2_over_w = projected_grid.new_empty(B, A)
    scratch = projected_grid.new_empty(min(B, _block_rows(N * A)), 1, N, A)
    for block in _blocks(B, N * A):
        g = d_scores[block]
        s = _sigmoids(projected_grid, hidden2.unsqueeze(1), block, scratch).squeeze(1)
        d_weight.addmv_(s.view(-1, A).t(), g.reshape(-1))
        ds = s.addcmul_(s, s, value=-1)  # sigmoid' = s (1 - s)
        torch.bmm(g.unsqueeze(1), ds, out=d_hidden2_over_w[block].unsqueeze(1))
        d_projected_grid_over_w[block].addcmul_(ds, g.unsqueeze(-1))
    return d_hidden2_over_w
