"""Caption decoders over a grid of image features, behind one registry.

Every decoder has the same face, so training and decoding never ask which one they hold:

- `forward(grid, tokens) -> (logits [B, T, V], alpha [B, T, N])`: teacher forcing; `tokens` are
  the inputs `<start> w1 .. wn` and `logits[:, t]` predicts the token after `tokens[:, t]`.
- `start(grid) -> (memory, state)`: `memory` is fixed for an image (never reordered);
  `state` is what changes from step to step.
- `step(memory, state, tokens [B * K]) -> (log_probs [B * K, V], alpha [B * K, N], state)`:
  the state may hold K consecutive rows per image (beam search expands it, not `memory`), and
  the K rows of an image attend to its one memory row together.

Grids come as `[B, D, H, W]` (the feature extractors' layout); `N = H * W` grid locations.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mmlab.captioning.attention import AdditiveAttention
from mmlab.core.registry import Registry

State = dict[str, torch.Tensor]
DECODERS = Registry("caption decoder")


def grid_tokens(grid: torch.Tensor) -> torch.Tensor:
    """`[B, D, H, W]` -> `[B, H*W, D]` (one token per grid location)."""
    if grid.dim() != 4:
        raise ValueError(f"expected a grid of shape [B, D, H, W], got {tuple(grid.shape)}")
    return grid.flatten(2).transpose(1, 2)


class AttentionLSTMCell(nn.Module):
    """One step of Show, Attend and Tell: attend with h_{t-1}, gate the context, run the LSTM."""

    def __init__(self, embed_dim: int, encoder_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.attention = AdditiveAttention(encoder_dim, hidden_dim, attention_dim)
        self.f_beta = nn.Linear(hidden_dim, 1)
        self.lstm = nn.LSTMCell(embed_dim + encoder_dim, hidden_dim)

    def forward(self, grid, projected_grid, words, h, c):
        """`(h, c, alpha)` for the embedded `words [B * K, E]` (K rows per grid row)."""
        context, alpha = self.attention(grid, projected_grid, h)
        context = torch.sigmoid(self.f_beta(h)) * context
        h, c = self.lstm(torch.cat([words, context], dim=1), (h, c))
        return h, c, alpha


@DECODERS.register("lstm_attention")
class LSTMAttentionDecoder(nn.Module):
    """Show, Attend and Tell (Xu et al., 2015) with soft attention.

    At step t, from the previous hidden state h_{t-1}:
        alpha_t   = softmax(w^T tanh(W_e a + W_h h_{t-1}))      (AdditiveAttention)
        beta_t    = sigmoid(f_beta(h_{t-1}))                     the gating scalar
        context_t = beta_t * sum_i alpha_ti a_i
        h_t, c_t  = LSTMCell([E y_{t-1}; context_t], (h_{t-1}, c_{t-1}))
        p(y_t)    = softmax(L_o dropout(h_t))
    with h_0, c_0 predicted from the mean grid feature.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        grid_size: tuple[int, int] | None = None,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        dropout: float = 0.3,
        pad_id: int = 0,
    ):
        super().__init__()
        self.vocab_size, self.encoder_dim, self.hidden_dim = vocab_size, encoder_dim, hidden_dim
        self.attention_dim, self.pad_id = attention_dim, pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.init_h = nn.Linear(encoder_dim, hidden_dim)
        self.init_c = nn.Linear(encoder_dim, hidden_dim)
        self.cell = AttentionLSTMCell(embed_dim, encoder_dim, hidden_dim, attention_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def init_state(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = grid.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def forward(self, grid: torch.Tensor, tokens: torch.Tensor):
        """Teacher forcing. Padded positions get zero attention and zero logits: the loss
        ignores them (their targets are padding)."""
        B, T = tokens.shape
        lengths = (tokens != self.pad_id).sum(1)
        order = lengths.argsort(descending=True, stable=True)
        grid = grid_tokens(grid)[order]
        inside = lengths[order].unsqueeze(0) > torch.arange(T, device=tokens.device).unsqueeze(1)
        active = inside.sum(1).tolist()  # rows at each step
        projected = self.cell.attention.project_grid(grid)  # W_e a once per batch, not per step
        words = self.embed(tokens[order])
        h, c = self.init_state(grid)
        hs, alphas = [], []
        for t, n in enumerate(active):  # the batch shrinks as captions end (rows sorted)
            h, c, alpha = self.cell(grid[:n], projected[:n], words[:n, t], h[:n], c[:n])
            hs.append(h)
            alphas.append(F.pad(alpha, (0, 0, 0, B - n)))
        # The output layer over the packed positions only, then scattered back into [B, T, V].
        steps, rows = inside.nonzero(as_tuple=True)  # step by step, as hs
        packed = self.fc(self.dropout(torch.cat(hs)))
        logits = packed.new_zeros(B, T, packed.size(1)).index_put((order[rows], steps), packed)
        return logits, torch.stack(alphas, dim=1)[order.argsort()]

    def compile(self, **options) -> None:
        """`torch.compile` the step, in place; the loop around it stays eager (its length and
        the rows at each step change from batch to batch)."""
        self.cell.compile(**{"dynamic": True, **options})

    def start(self, grid: torch.Tensor) -> tuple[State, State]:
        grid = grid_tokens(grid)
        h, c = self.init_state(grid)
        memory = {"grid": grid, "projected_grid": self.cell.attention.project_grid(grid)}
        return memory, {"h": h, "c": c}

    def step(self, memory: State, state: State, tokens: torch.Tensor):
        h, c, alpha = self.cell(
            memory["grid"], memory["projected_grid"], self.embed(tokens), state["h"], state["c"]
        )
        return F.log_softmax(self.fc(h).float(), dim=-1), alpha, {"h": h, "c": c}


class MultiHeadAttention(nn.Module):
    """Multi-head attention with its own projections (nanoGPT's style): `qkv` for
    self-attention, `q` and `kv` for cross-attention, then `proj`. The weights, averaged
    over heads, are computed only when asked for (a figure needs them); otherwise
    `scaled_dot_product_attention` runs."""

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool = False):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads, self.dropout_p = heads, dropout
        if cross:
            self.q, self.kv = nn.Linear(d_model, d_model), nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self._reset_parameters(d_model)

    def _reset_parameters(self, d_model: int) -> None:
        """As nn.MultiheadAttention initialises itself: the input projections uniform with
        the Xavier bound of its packed `[3D, D]` weight, zero biases."""
        bound = math.sqrt(6 / (4 * d_model))
        for linear in (self.qkv,) if hasattr(self, "qkv") else (self.q, self.kv):
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.proj.bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, D]` -> `[B, heads, T, D / heads]`."""
        return x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention keys and values of `memory [B, N, D]`, each `[B, heads, N, d]`."""
        return tuple(self.split_heads(x) for x in self.kv(memory).chunk(2, dim=-1))

    def forward(self, x, memory=None, *, past=None, need_weights: bool = False):
        """`(output [R, T, D], weights [R, T, N] averaged over heads or None, keys and values)`.

        Without `memory`: causal self-attention of `x`, after `past` (the keys and values of
        the earlier positions, `[R, heads, P, d]` each: a cache) for one new position; the
        keys and values returned include x's, to extend the cache. With `memory` (`[B, N, D]`
        or its `keys_values`): cross-attention, the `R = B * K` rows of `x` in K consecutive
        rows per memory row (e.g. beams) that attend to it together, without copies of it."""
        R, T, D = x.shape
        if memory is None:
            if past is not None and T > 1:
                raise ValueError(f"a cache extends one position at a time, got {T}")
            q, k, v = (self.split_heads(t) for t in self.qkv(x).chunk(3, dim=-1))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            cache = k, v
        else:
            k, v = self.keys_values(memory) if torch.is_tensor(memory) else memory
            q, cache = self.split_heads(self.q(x).reshape(k.size(0), -1, D)), None
        causal = memory is None and past is None  # one position after a cache attends to all
        p = self.dropout_p if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
            if causal:
                future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            weights = F.dropout(torch.softmax(scores, dim=-1), p, self.training)
            out, alpha = weights @ v, weights.mean(dim=1).reshape(R, T, -1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
            alpha = None
        return self.proj(out.transpose(1, 2).reshape(R, T, D)), alpha, cache


class _DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer that returns its cross-attention weights."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout, cross=True)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory, need_weights: bool = True, past=None):
        """`(x, alpha, the self-attention's keys and values, past's and x's, for the cache)`,
        `memory` and `past` as `MultiHeadAttention` takes them; alpha is None for
        `need_weights=False` (a layer whose cross-attention weights are not returned)."""
        attended, _, keys_values = self.self_attn(self.norm1(x), past=past)
        x = x + self.dropout(attended)
        attended, alpha, _ = self.cross_attn(self.norm2(x), memory, need_weights=need_weights)
        x = x + self.dropout(attended)
        return x + self.dropout(self.ff(self.norm3(x))), alpha, keys_values


@DECODERS.register("transformer")
class TransformerDecoder(nn.Module):
    """A small transformer decoder over the grid tokens (learned 2-D position per location).

    `alpha` is the last layer's cross-attention, averaged over heads. Decoding projects the
    grid's cross-attention keys and values once and caches each layer's self-attention keys
    and values, so a step costs one token, not the whole prefix.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        grid_size: tuple[int, int],
        d_model: int = 256,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int = 512,
        dropout: float = 0.1,
        max_len: int = 64,
        pad_id: int = 0,
    ):
        super().__init__()
        self.vocab_size, self.encoder_dim = vocab_size, encoder_dim
        self.grid_size, self.d_model, self.max_len = tuple(grid_size), d_model, max_len
        self.memory_proj = nn.Sequential(nn.Linear(encoder_dim, d_model), nn.LayerNorm(d_model))
        self.grid_position = nn.Parameter(torch.zeros(1, math.prod(grid_size), d_model))
        nn.init.normal_(self.grid_position, std=0.02)
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.position = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(
            _DecoderLayer(d_model, heads, ff_dim, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(d_model, vocab_size)

    def compile(self, **options) -> None:
        """`torch.compile` teacher forcing, in place, for captions of any length."""
        super().compile(**{"dynamic": True, **options})

    def encode(self, grid: torch.Tensor) -> torch.Tensor:
        if tuple(grid.shape[2:]) != self.grid_size:
            raise ValueError(
                f"decoder was built for a {self.grid_size} grid, got {tuple(grid.shape[2:])}"
            )
        return self.memory_proj(grid_tokens(grid)) + self.grid_position

    def _decode(self, tokens: torch.Tensor, memory, state: State | None = None):
        """`(logits, alpha, state)` of `tokens [R, T]` over `memory` (the encoded grid, or
        `start`'s memory), after the positions whose self-attention keys and values `state`
        caches (None: none); the state returned caches `tokens`' too."""
        start = 0 if state is None else state["k0"].size(2)
        T = start + tokens.size(1)
        if T > self.max_len:
            raise ValueError(f"caption of {T} tokens is longer than max_len={self.max_len}")
        positions = torch.arange(start, T, device=tokens.device)
        x = self.dropout(self.embed(tokens) * math.sqrt(self.d_model) + self.position(positions))
        last, cache = len(self.layers) - 1, {}
        for i, layer in enumerate(self.layers):  # alpha: the last layer's
            grid = memory if torch.is_tensor(memory) else (memory[f"k{i}"], memory[f"v{i}"])
            past = None if state is None else (state[f"k{i}"], state[f"v{i}"])
            x, alpha, (k, v) = layer(x, grid, need_weights=i == last, past=past)
            cache[f"k{i}"], cache[f"v{i}"] = k, v
        return self.fc(self.norm(x)), alpha, cache

    def forward(self, grid: torch.Tensor, tokens: torch.Tensor):
        logits, alpha, _ = self._decode(tokens, self.encode(grid))
        return logits, alpha

    def start(self, grid: torch.Tensor) -> tuple[State, State]:
        """Memory: the grid tokens' cross-attention keys and values of every layer, projected
        once. State: every layer's self-attention keys and values of the words so far (a
        cache), so a step runs one new token through the layers instead of the whole prefix."""
        encoded = self.encode(grid)
        memory, state = {}, {}
        for i, layer in enumerate(self.layers):
            k, v = layer.cross_attn.keys_values(encoded)
            # contiguous once here, or every step's matmul would copy them
            memory[f"k{i}"], memory[f"v{i}"] = k.contiguous(), v.contiguous()
            empty = k.new_zeros(grid.size(0), k.size(1), 0, k.size(3))
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return memory, state

    def step(self, memory: State, state: State, tokens: torch.Tensor):
        """One more position through the layers of teacher forcing, attending to the cache."""
        logits, alpha, state = self._decode(tokens.unsqueeze(1), memory, state)
        return F.log_softmax(logits[:, 0].float(), dim=-1), alpha[:, 0], state


def available() -> list[str]:
    return DECODERS.names()


def create_decoder(name: str, **options) -> nn.Module:
    """`create_decoder("lstm_attention", vocab_size=, encoder_dim=, grid_size=, ...)`; an
    unknown name or an option the decoder does not take is a RegistryError naming it."""
    return DECODERS.create(name, **options)
