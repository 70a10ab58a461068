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
    0.0: the plain sum, which favours short captions).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, K, device = grid.size(0), beam_size, grid.device
    memory, state = decoder.start(grid)
    rows = torch.arange(B, device=device).repeat_interleave(K)
    state = _select(state, rows)  # memory stays one row per image: its K beams share it
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first at step one
    tokens = torch.full((B * K,), start_id, dtype=torch.long, device=device)
    finished = torch.zeros(B * K, dtype=torch.bool, device=device)
    length = torch.zeros(B * K, dtype=torch.long, device=device)
    offsets = (torch.arange(B, device=device) * K).unsqueeze(1)
    # Per step: each row's parent row, its new token, and the attention its parent computed.
    # Captions are read back once at the end (backtracking), not copied at every step.
    parents, words, alphas = [], [], []
    for _ in range(max_len):
        step_log_probs, alpha, state = decoder.step(memory, state, tokens)
        V = step_log_probs.size(1)
        step_log_probs = _never(step_log_probs, start_id, pad_id)
        # a finished beam has exactly one continuation, <pad>, which costs nothing
        step_log_probs = step_log_probs.masked_fill(finished.unsqueeze(1), float("-inf"))
        step_log_probs[finished, pad_id] = 0.0
        candidates = (scores.view(-1, 1) + step_log_probs).view(B, K * V)
        scores, flat = candidates.topk(K, dim=1)
        parent = (offsets + flat // V).view(-1)
        tokens = (flat % V).view(-1)
        state = _select(state, parent)
        finished, length = finished[parent], length[parent]
        length += (~finished).long()
        parents.append(parent)
        words.append(tokens)
        alphas.append(alpha)
        finished = finished | (tokens == end_id)
        if finished.all():
            break
    normalised = scores.view(-1) / length.clamp(min=1).float().pow(length_penalty)
    best = offsets.view(-1) + normalised.view(B, K).argmax(dim=1)
    row, history, attention = best, [], []
    for t in reversed(range(len(words))):
        parent, word, alpha = parents[t], words[t], alphas[t]
        history.append(word[row])
        row = parent[row]
        attention.append(alpha[row])
    history, attention = torch.stack(history[::-1], 1), torch.stack(attention[::-1], 1)
    return _finish(history, attention, scores.view(-1)[best], length[best], end_id)


def decode(decoder, grid: torch.Tensor, *, beam_size: int = 1, **options) -> Decoded:
    """Greedy for `beam_size == 1`, beam search otherwise."""
    if beam_size == 1:
        options.pop("length_penalty", None)
        return greedy(decoder, grid, **options)
    return beam_search(decoder, grid, beam_size=beam_size, **options)
