"""A bidirectional one-layer GRU over padded sequences: `nn.GRU` with `pack_padded_sequence`."""

from __future__ import annotations

from torch import Tensor, nn


class BiGRU(nn.GRU):
    """`nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)` as
    `forward(x [B, T, D], mask [B, T] | None) -> [B, T, 2H]` from a zero state; with a mask each
    row is packed to its unmasked prefix (masked steps output zeros)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            return super().forward(x)[0]
        # an all-padding row is packed as one step, whose output the mask then zeroes
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out = super().forward(packed)[0]
        out = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return out * mask.unsqueeze(-1)
