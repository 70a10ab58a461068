"""Show, Attend and Tell's teacher-forced recurrence as one autograd node, backward by hand.

Autograd records some thirty small operations per time step, each with its own bookkeeping,
and computes every weight gradient one time step at a time. Written as one `Function`:

- the backward runs about half as many operations per step: each gate's local derivative is
  taken in the forward, while the activations are at hand;
- the weight gradients of the recurrent products (`W_hh | W_h | f_beta` of h_{t-1}, and the
  context's `W_c`) are one matmul each over all steps after the loop, not T small ones;
- the attention's `[B, N, A]` work (add, sigmoid, product with `w`, and their backward) runs a
  block of rows at a time in cache (`attention.scores`, `attention.scores_backward`), and its
  gradient accumulates in place instead of through per-step copies and zero-filled slices;
- the backward computes the attention's sigmoids again, block by block in cache: kept from the
  forward, they are `[B, N, A]` per step written to memory and read back (40 MB a batch at the
  benchmark's sizes), which costs more than the sigmoid;
- `values^T d_context` runs as a row vector times `[D, N]` (a transposed copy made once):
  autograd's `bmm` backward takes a path several times slower on a CPU.

Measured against autograd through the same `_cell`, both on packed steps (benchmark sizes,
median of 8 paired rounds): 1.25x faster with 2 threads, 1.17x with 1.

The arithmetic is `LSTMAttentionDecoder._cell`'s (which decoding still uses, one step at a
time); tests check the gradients of both against each other.
"""

from __future__ import annotations

import torch

from mmlab.captioning import attention


def tanh(x: torch.Tensor) -> torch.Tensor:
    """`tanh(x) = 2 sigmoid(2x) - 1`: this CPU's `tanh` is not vectorised and `sigmoid` is
    (`[64, 256]`: 44 us against 9 us for the sigmoid, 18 us for the four operations here)."""
    return torch.sigmoid(2 * x).mul(2).sub_(1)


class AttendedLSTM(torch.autograd.Function):
    """`(hs [R, H], alphas [B, T, N])` of the decoder run over all steps.

    Rows are sorted by caption length and step t runs the first `active[t]` rows. Per-step
    inputs and outputs are packed step after step (`R = sum(active)` rows: step t's at
    `_row_slices(active)[t]`), so no work or memory goes to positions past a caption's end;
    alphas stay zero there. `values` are what attention averages: the grid `[B, N, D]` with
    `context_weight` `W_c` `[4H, D]`, or, when `context_weight` is None, the grid's gate
    contributions `W_c a` `[B, N, 4H]` already (`LSTMAttentionDecoder.project_grid`).
    """

    @staticmethod
    def forward(
        ctx,
        word_gates,  # [R, 4H]: the words' input-to-gate products, packed
        h0,
        c0,
        projected_grid,  # [B, N, A]: 2 W_e a (+ bias)
        values,
        hidden_weight,  # [4H + A + 1, H]: W_hh | W_h | f_beta
        hidden_bias,
        score_weight,  # [A]: w
        score_bias,  # [1]
        context_weight,  # [4H, D] or None
        active: list[int],
    ):
        (R, G), B, T = word_gates.shape, h0.size(0), len(active)
        H, (N, A), D = G // 4, projected_grid.shape[1:], values.size(2)
        alphas = word_gates.new_zeros(B, T, N)
        # packed like word_gates (the weight gradients take all steps at once)
        rows = _row_slices(active)
        hs, h_prev = word_gates.new_empty(R, H), word_gates.new_empty(R, H)
        context = word_gates.new_empty(R, D)  # beta_t * context_t (see `backward`)
        saved = {key: [] for key in ("f", "local", "dc_dh", "hidden2", "beta")}
        h, c, one = h0, c0, word_gates.new_ones(())
        for t, (n, at) in enumerate(zip(active, rows, strict=True)):
            h, c = h_prev[at].copy_(h[:n]), c[:n]
            hidden_gates, u, f_beta = torch.addmm(hidden_bias, h, hidden_weight.t()).split(
                [G, A, 1], dim=1
            )
            hidden2 = 2 * u
            e = attention.scores(projected_grid[:n], hidden2, score_weight, score_bias)
            alpha = torch.softmax(2 * e, dim=1)
            beta = torch.sigmoid(f_beta)
            scaled = context[at]
            torch.bmm(alpha.unsqueeze(1), values[:n], out=scaled.unsqueeze(1)).mul_(
                beta.unsqueeze(1)
            )
            gates = word_gates[at] + hidden_gates
            if context_weight is None:
                gates.add_(scaled)
            else:
                gates.addmm_(scaled, context_weight.t())
            gates[:, 2 * H : 3 * H].mul_(2)  # g: tanh(x) = 2 sigmoid(2x) - 1 (see `tanh`)
            gates.sigmoid_()
            i, f, g, o = gates.split(H, dim=1)
            g.mul_(2).sub_(1)
            c_prev, c = c, torch.addcmul(f * c, i, g)
            tanh_c = tanh(c)
            h = torch.mul(o, tanh_c, out=hs[at])
            # Backward's local factors, taken now while the activations are at hand: each
            # gate's derivative times what it multiplies (d gates = these * dc, or * dh for o).
            local = torch.addcmul(gates, gates, gates, value=-1)  # sigmoid' = s (1 - s)
            torch.addcmul(one, g, g, value=-1, out=local[:, 2 * H : 3 * H])  # tanh' = 1 - g^2
            for factor, partner in zip(local.split(H, dim=1), (g, c_prev, i, tanh_c), strict=True):
                factor.mul_(partner)
            dc_dh = torch.addcmul(one, tanh_c, tanh_c, value=-1).mul_(o)
            for key, value in zip(saved, (f, local, dc_dh, hidden2, beta), strict=True):
                saved[key].append(value)
            alphas[:n, t] = alpha
        ctx.saved, ctx.active = saved, active
        ctx.save_for_backward(
            alphas, values, projected_grid, h_prev, context, hidden_weight, score_weight,
            context_weight,
        )  # fmt: skip
        return hs, alphas

    @staticmethod
    def backward(ctx, d_hs, d_alphas):
        (alphas, values, projected_grid, h_prev, context, hidden_weight, score_weight,
         context_weight) = ctx.saved_tensors  # fmt: skip
        saved, active = ctx.saved, ctx.active
        rows = _row_slices(active)
        B, T, N = alphas.shape
        (R, H), A, D = h_prev.shape, score_weight.size(0), values.size(2)
        G = 4 * H
        d_projected_grid = d_hs.new_zeros(B, N, A)  # without its factor w until after the loop
        d_score_weight, d_score_bias = torch.zeros_like(score_weight), d_hs.new_zeros(1)
        d_y = d_hs.new_empty(R, G + A + 1)  # of [W_hh h | W_h h | f_beta(h)], all steps
        d_context = d_hs.new_zeros(B, T, D)  # zero where a row has ended
        # [B, D, N]: `values^T d_context` as a row-vector product runs several times faster
        values_t = values.transpose(1, 2).contiguous()
        d_h, d_c = d_hs.new_zeros(B, H), d_hs.new_zeros(B, H)  # from step t + 1
        score_weight2 = 2 * score_weight
        for t in reversed(range(T)):
            n, at = active[t], rows[t]
            dh = d_hs[at] + d_h[:n]
            dc = torch.addcmul(d_c[:n], dh, saved["dc_dh"][t])
            d_gates, d_u, d_f_beta = d_y[at].split([G, A, 1], dim=1)
            local = saved["local"][t].view(n, 4, H)
            torch.mul(local[:, :3], dc.unsqueeze(1), out=d_gates.view(n, 4, H)[:, :3])  # i f g
            torch.mul(local[:, 3], dh, out=d_gates[:, 3 * H :])  # o
            # The forward kept s = beta * context, so with d_s = d gates W_c (or d gates):
            # d context = beta d_s, and d f_beta = (d_s . context) beta (1 - beta) =
            # (d_s . s) (1 - beta): both [n, D], and no [n, 4H] product is kept per step.
            beta = saved["beta"][t]
            d_s = d_gates if context_weight is None else d_gates @ context_weight
            torch.mul((d_s * context[at]).sum(1, keepdim=True), 1 - beta, out=d_f_beta)
            torch.mul(d_s, beta, out=d_context[:n, t])
            alpha = alphas[:n, t]
            d_alpha = torch.bmm(d_context[:n, t].unsqueeze(1), values_t[:n]).squeeze(1)
            if d_alphas is not None:
                d_alpha += d_alphas[:n, t]
            d_e = 2 * alpha * (d_alpha - (d_alpha * alpha).sum(1, keepdim=True))
            d_score_bias += d_e.sum()
            d_u_over_w = attention.scores_backward(
                projected_grid[:n], saved["hidden2"][t], d_e, d_projected_grid[:n], d_score_weight
            )
            torch.mul(d_u_over_w, score_weight2, out=d_u)
            d_h[:n] = d_y[at] @ hidden_weight
            torch.mul(dc, saved["f"][t], out=d_c[:n])
        ctx.saved = None
        d_projected_grid.mul_(score_weight)
        d_values = None
        if ctx.needs_input_grad[4]:  # sum over steps of alpha_t^T d_context_t, per row
            d_values = torch.bmm(alphas.transpose(1, 2), d_context)
        d_context_weight = None
        if context_weight is not None and ctx.needs_input_grad[9]:
            d_context_weight = d_y[:, :G].t() @ context
        return (d_y[:, :G], d_h, d_c, d_projected_grid, d_values, d_y.t() @ h_prev,
                d_y.sum(0), d_score_weight, d_score_bias, d_context_weight, None)  # fmt: skip


def _row_slices(active: list[int]) -> list[slice]:
    """Where each step's rows sit in a tensor of all steps' rows, one step after another."""
    ends = torch.tensor(active).cumsum(0).tolist()
    return [slice(end - n, end) for n, end in zip(active, ends, strict=True)]
