"""A bidirectional one-layer GRU whose recurrence is one autograd node, backward by hand.

`nn.GRU` on a CPU runs each time step as a dozen small operations that autograd records one
by one, and the two directions one after the other. At the fusion models' sizes (a batch of
64 captions, 32 units a direction) each of them costs its dispatch, not its arithmetic.
`BiGRU` runs both directions in one batched product a step (`[2, B, H] @ [2, H, 3H]`) and
four fused element-wise operations written into time-major buffers; every gate's local
derivative is computed for all steps at once after the loop, so the backward loop is one
addition, five multiplications and one product a step, and the recurrent weights' gradient
is one product over all steps. Same parameters (it is an `nn.GRU`), same arithmetic: tests
compare outputs and every gradient with `nn.GRU`'s in float64. `benchmarks/bench_fusion.py`
measures it.

On a GPU it is `nn.GRU` itself (cuDNN runs the recurrence fused already).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _Recurrence(torch.autograd.Function):
    """hs [T, 2, B, H] of h_t = GRU(h_{t-1}, x_t) from h_0 = 0, both directions at once.

    `gates` [T, 2, B, 3H] are the inputs' products `W_ih x + b_ih`, time-major (so a step's
    slices are contiguous), the second direction already in its own reading order; `weight`
    [2, 3H, H] and `bias` [2, 3H] are `W_hh` and `b_hh` of the two directions; `backward`:
    whether to prepare the backward (not under `torch.no_grad()`).
    """

    @staticmethod
    def forward(ctx, gates: Tensor, weight: Tensor, bias: Tensor, backward: bool) -> Tensor:
        T, _, B, G = gates.shape
        H = G // 3
        hs = gates.new_empty(T + 1, 2, B, H)  # hs[0] is h_0
        hs[0].zero_()
        hidden = gates.new_empty(T, 2, B, G)  # W_hh h + b_hh; r multiplies its n part
        rz = gates.new_empty(T, 2, B, 2 * H)
        n = gates.new_empty(T, 2, B, H)
        weight_t, bias = weight.transpose(1, 2), bias.unsqueeze(1)
        for t in range(T):
            torch.baddbmm(bias, hs[t], weight_t, out=hidden[t])
            torch.add(gates[t, ..., : 2 * H], hidden[t, ..., : 2 * H], out=rz[t]).sigmoid_()
            torch.addcmul(gates[t, ..., 2 * H :], rz[t, ..., :H], hidden[t, ..., 2 * H :], out=n[t])
            torch.lerp(n[t].tanh_(), hs[t], rz[t, ..., H:], out=hs[t + 1])  # n + z (h - n)
        if not backward:  # evaluation: no derivatives to prepare
            return hs[1:]
        r, z = rz[..., :H], rz[..., H:]
        # Local derivatives, all steps at once: the backward loop only multiplies by them.
        d_n = (1 - z) * (1 - n * n)  # dh -> d(pre-activation of n)
        d_z = (hs[:-1] - n) * z * (1 - z)  # dh -> d(pre-activation of z)
        d_r = hidden[..., 2 * H :] * r * (1 - r)  # d(pre n) -> d(pre-activation of r)
        ctx.save_for_backward(hs, r.contiguous(), z.contiguous(), d_n, d_z, d_r, weight)
        return hs[1:]

    @staticmethod
    def backward(ctx, d_hs: Tensor):
        hs, r, z, d_n, d_z, d_r, weight = ctx.saved_tensors
        T, _, B, H = d_hs.shape
        d_hidden = d_hs.new_empty(T, 2, B, 3 * H)  # of W_hh h + b_hh: r's, z's, then r d(pre n)
        d_pre_n = d_hs.new_empty(T, 2, B, H)  # of n's pre-activation
        dh = d_hs[T - 1].clone()
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                dh += d_hs[t]
            torch.mul(dh, d_n[t], out=d_pre_n[t])
            torch.mul(dh, d_z[t], out=d_hidden[t, ..., H : 2 * H])
            torch.mul(d_pre_n[t], d_r[t], out=d_hidden[t, ..., :H])
            torch.mul(d_pre_n[t], r[t], out=d_hidden[t, ..., 2 * H :])
            dh = torch.baddbmm(dh * z[t], d_hidden[t], weight)
        d_gates = torch.cat([d_hidden[..., : 2 * H], d_pre_n], dim=-1)
        by_direction = d_hidden.transpose(0, 1).flatten(1, 2)  # [2, T * B, 3H]
        d_weight = by_direction.transpose(1, 2) @ hs[:-1].transpose(0, 1).flatten(1, 2)
        return d_gates, d_weight, by_direction.sum(1), None


def reading_order(lengths: Tensor, steps: int) -> Tensor:
    """[B, T] index that reverses each row's first `lengths[b]` steps and keeps the rest in
    place: the backward direction's reading order of packed sequences (its own inverse)."""
    t = torch.arange(steps, device=lengths.device)
    reverse = lengths.unsqueeze(1) - 1 - t
    return torch.where(reverse >= 0, reverse, t)


class BiGRU(nn.GRU):
    """`nn.GRU(input_size, hidden_size, batch_first=True, bidirectional=True)` with
    `forward(x [B, T, D], mask [B, T] | None) -> [B, T, 2H]` from a zero initial state.

    With a mask, each row is read as its unmasked prefix (what packing gives: the backward
    direction starts at the row's last step, and masked steps output zeros); without one,
    every row is read whole.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if x.is_cuda:
            return self._reference(x, mask)
        B, T, _ = x.shape
        if mask is None:
            backward_x = x.flip(1)
        else:  # rows of [B * T]: index_select is several times faster than gather here
            order = reading_order(mask.sum(1), T) + T * torch.arange(B).unsqueeze(1)
            order = order.flatten()
            backward_x = x.flatten(0, 1).index_select(0, order).view_as(x)
        gates = torch.stack(
            [
                nn.functional.linear(x, self.weight_ih_l0, self.bias_ih_l0),
                nn.functional.linear(
                    backward_x, self.weight_ih_l0_reverse, self.bias_ih_l0_reverse
                ),
            ]
        ).permute(2, 0, 1, 3)  # [T, 2, B, 3H]
        weight = torch.stack([self.weight_hh_l0, self.weight_hh_l0_reverse])
        bias = torch.stack([self.bias_hh_l0, self.bias_hh_l0_reverse])
        hs = _Recurrence.apply(gates.contiguous(), weight, bias, torch.is_grad_enabled())
        hs = hs.permute(1, 2, 0, 3)  # [2, B, T, H]
        if mask is None:
            return torch.cat([hs[0], hs[1].flip(1)], dim=-1)
        backward_hs = hs[1].flatten(0, 1).index_select(0, order).view(B, T, -1)
        return torch.cat([hs[0], backward_hs], dim=-1) * mask.unsqueeze(-1)

    def _reference(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`nn.GRU` itself, packed when there is a mask."""
        if mask is None:
            return super().forward(x)[0]
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out = super().forward(packed)[0]
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
