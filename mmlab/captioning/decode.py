"""Batched greedy and beam-search decoding for any decoder of `mmlab.captioning.decoders`.

Both loop over time steps only: all images (and all beams of all images) advance together as
rows of one batch, and a finished row keeps going with `<pad>` at zero cost until every row is
done. Scores are log-probabilities summed over the generated tokens, `<end>` included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Decoded:
    tokens: list[list[int]]  # word ids per image, without <start>/<end>
    log_prob: torch.Tensor  # [B] summed log-probability of the tokens and <end>
    length: torch.Tensor  # [B] number of scored tokens (words + <end> if reached)
    attention: list[torch.Tensor]  # per image [len(tokens), N]: alpha for each word

    @property
    def mean_log_prob(self) -> torch.Tensor:
        return self.log_prob / self.length.clamp(min=1)


def _never(log_probs: torch.Tensor, *ids: int) -> torch.Tensor:
    """Forbid tokens a caption never contains (`<start>`, `<pad>`)."""
    log_probs[:, list(ids)] = float("-inf")
    return log_probs


def _select(state: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: value.index_select(0, index) for key, value in state.items()}


def _finish(history, alphas, log_prob, length, end_id) -> Decoded:
    tokens = [row[:n] for row, n in zip(history.tolist(), length.tolist(), strict=True)]
    # `length` counts <end>; a caption cut at max_len has no <end> and keeps all its tokens.
    tokens = [t[:-1] if t and t[-1] == end_id else t for t in tokens]
    attention = [alphas[i, : len(t)].float().cpu() for i, t in enumerate(tokens)]
    return Decoded(tokens, log_prob.float().cpu(), length.float().cpu(), attention)


@torch.no_grad()
def greedy(
    decoder, grid: torch.Tensor, *, start_id: int, end_id: int, pad_id: int = 0, max_len: int = 30
) -> Decoded:
    """The most probable next word at every step, for a whole batch of grids at once."""
    memory, state = decoder.start(grid)
    B = grid.size(0)
    tokens = torch.full((B,), start_id, dtype=torch.long, device=grid.device)
    finished = torch.zeros(B, dtype=torch.bool, device=grid.device)
    log_prob = torch.zeros(B, device=grid.device)
    length = torch.zeros(B, dtype=torch.long, device=grid.device)
    history, alphas = [], []
    for _ in range(max_len):
        step_log_probs, alpha, state = decoder.step(memory, state, tokens)
        best, tokens = _never(step_log_probs, start_id, pad_id).max(dim=1)
        tokens = tokens.masked_fill(finished, pad_id)
        log_prob += best.masked_fill(finished, 0.0)
        length += (~finished).long()
        history.append(tokens)
        alphas.append(alpha)
        finished |= tokens == end_id
        if finished.all():
            break
    return _finish(torch.stack(history, 1), torch.stack(alphas, 1), log_prob, length, end_id)


@torch.no_grad()
def beam_search(
    decoder,
    grid: torch.Tensor,
    *,
    beam_size: int = 3,
    start_id: int,
    end_id: int,
    pad_id: int = 0,
    max_len: int = 30,
    length_penalty: float = 1.0,
) -> Decoded:
    """Beam search over all images at once: `B * beam_size` rows in one batch.

    Beams are ranked by summed log-probability while searching; the final pick per image
    maximises `log_prob / length ** length_penalty` (1.0: the mean log-probability per token,
    0.0: the plain sum, which favours short captions). An image whose beams have all ended
    leaves the batch, so a batch costs what its captions need, not B times the longest.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K, device = grid.size(0), beam_size, grid.device
    memory, state = decoder.start(grid)
    rows = torch.arange(B * K, device=device)  # global row of each batch row: image * K + beam
    memory, state = _select(memory, rows // K), _select(state, rows // K)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first at step one
    tokens = torch.full((B * K,), start_id, dtype=torch.long, device=device)
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)
    length = torch.zeros(B * K, dtype=torch.long, device=device)
    final_scores, final_length = scores.clone(), length.clone()  # all images, by global row
    # Per step, by global row: its parent row, its new token, the attention its parent computed
    # (rows of images that have left: themselves, <pad>, zeros). Captions are read back once
    # at the end (backtracking), not copied at every step.
    parents, words, alphas = [], [], []
    for _ in range(max_len):
        step_log_probs, alpha, state = decoder.step(memory, state, tokens)
        n, V = scores.size(0), step_log_probs.size(1)
        step_log_probs = _never(step_log_probs, start_id, pad_id)
        # a finished beam has exactly one continuation, <pad>, which costs nothing
        step_log_probs = step_log_probs.masked_fill(finished.unsqueeze(1), float("-inf"))
        step_log_probs[finished, pad_id] = 0.0
        candidates = (scores.view(-1, 1) + step_log_probs).view(n, K * V)
        scores, flat = candidates.topk(K, dim=1)
        offsets = (torch.arange(n, device=device) * K).unsqueeze(1)
        parent = (offsets + flat // V).view(-1)
        tokens = (flat % V).view(-1)
        state = _select(state, parent)
        finished, length = finished[parent], length[parent]
        length += (~finished).long()
        finished = finished | (tokens == end_id)
        parents.append(torch.arange(B * K, device=device).index_copy(0, rows, rows[parent]))
        words.append(torch.full((B * K,), pad_id, device=device).index_copy(0, rows, tokens))
        alphas.append(alpha.new_zeros(B * K, alpha.size(1)).index_copy(0, rows, alpha[parent]))
        final_scores.view(-1).index_copy_(0, rows, scores.view(-1))
        final_length.index_copy_(0, rows, length)
        done = finished.view(n, K).all(dim=1)
        if done.all():
            break
        if done.any():  # these images' captions are final: drop their rows
            keep = (~done).repeat_interleave(K).nonzero().squeeze(1)
            memory, state = _select(memory, keep), _select(state, keep)
            rows, tokens, finished, length = rows[keep], tokens[keep], finished[keep], length[keep]
            scores = scores[~done]
    normalised = final_scores.view(-1) / final_length.clamp(min=1).float().pow(length_penalty)
    best = torch.arange(B, device=device) * K + normalised.view(B, K).argmax(dim=1)
    row, history, attention = best, [], []
    for t in reversed(range(len(words))):
        history.append(words[t][row])
        attention.append(alphas[t][row])
        row = parents[t][row]
    history, attention = torch.stack(history[::-1], 1), torch.stack(attention[::-1], 1)
    return _finish(history, attention, final_scores.view(-1)[best], final_length[best], end_id)


def decode(decoder, grid: torch.Tensor, *, beam_size: int = 1, **options) -> Decoded:
    """Greedy for `beam_size == 1`, beam search otherwise."""
    if beam_size == 1:
        options.pop("length_penalty", None)
        return greedy(decoder, grid, **options)
    return beam_search(decoder, grid, beam_size=beam_size, **options)
