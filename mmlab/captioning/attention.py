"""Additive (Bahdanau) attention over a grid of image features, as in Show, Attend and Tell.

e_ti  = w^T tanh(W_e a_i + W_h h_{t-1})      a_i: the grid feature at location i
alpha = softmax_i(e_ti)
context = sum_i alpha_ti a_i
"""

from __future__ import annotations

import torch
from torch import nn


class AdditiveAttention(nn.Module):
    def __init__(self, encoder_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.W_e = nn.Linear(encoder_dim, attention_dim)
        self.W_h = nn.Linear(hidden_dim, attention_dim)
        self.w = nn.Linear(attention_dim, 1)

    def project_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """`W_e a` `[B, N, A]` of a grid `[B, N, D]`: it does not depend on the time step, so
        a decoder computes it once per batch and passes it to every step."""
        return self.W_e(grid)

    def forward(
        self, grid: torch.Tensor, projected_grid: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(context [B * K, D], alpha [B * K, N])` for hidden states `h [B * K, H]`: rows
        `b * K .. b * K + K - 1` (e.g. the beams of image b) attend to grid row b together,
        without copies of the grid."""
        B, N, A = projected_grid.shape
        hidden = self.W_h(h).view(B, -1, 1, A)
        scores = self.w(torch.tanh(projected_grid.unsqueeze(1) + hidden)).squeeze(-1)
        alpha = torch.softmax(scores, dim=-1)  # [B, K, N]
        return torch.bmm(alpha, grid).flatten(0, 1), alpha.flatten(0, 1)
