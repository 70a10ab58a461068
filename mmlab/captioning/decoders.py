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

from mmlab.captioning.attention import AdditiveAttention, attend
from mmlab.captioning.recurrence import AttendedLSTM, tanh

State = dict[str, torch.Tensor]


def grid_tokens(grid: torch.Tensor) -> torch.Tensor:
    """`[B, D, H, W]` -> `[B, H*W, D]` (one token per grid location)."""
    if grid.dim() != 4:
        raise ValueError(f"expected a grid of shape [B, D, H, W], got {tuple(grid.shape)}")
    return grid.flatten(2).transpose(1, 2)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout`, with its mask drawn as `rand >= p`: on a CPU, `F.dropout`'s `bernoulli_`
    draws several times slower than `rand` (`[1000, 256]` forward and backward: 2.8 ms
    against 0.9 ms). The same distribution, from another stream of the same generator.
    Elsewhere (other devices, 16-bit floats, where 1 / (1 - p) would round) `F.dropout`."""
    fast = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
    if not (training and fast and 0 < p < 1):
        return F.dropout(x, p, training)
    return x * torch.rand_like(x).ge_(p).mul_(1 / (1 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` through `dropout` above (the decoders' dropout layers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class LSTMAttentionDecoder(nn.Module):
    """Show, Attend and Tell (Xu et al., 2015) with soft attention.

    At step t, from the previous hidden state h_{t-1}:
        alpha_t   = softmax(w^T tanh(W_e a + W_h h_{t-1}))      (AdditiveAttention)
        beta_t    = sigmoid(f_beta(h_{t-1}))                     the gating scalar
        context_t = beta_t * sum_i alpha_ti a_i
        h_t, c_t  = LSTM([E y_{t-1}; context_t], h_{t-1}, c_t-1)
        p(y_t)    = softmax(L_o dropout(h_t))
    with h_0, c_0 predicted from the mean grid feature. Speed: everything that depends on the grid
    alone is computed once per batch, not once per step: the attention projection `W_e a`, and
    and, for a deep grid with few locations (4x4x1280), the context's product with the LSTM input
    weights `W_c a` (linearity: W_c context_t = beta_t * sum_i alpha_ti W_c a_i, so `context_t`
    is then never materialised, only its gate contribution `context_gates`). Also: the words' input-to-gate products for all steps in one
    matmul before the loop, the output layer once after it, and the three products of h_{t-1}
    (W_hh for the gates, W_h for attention, f_beta) in one fused matmul per step.
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
        self.attention = AdditiveAttention(encoder_dim, attention_dim)
        self.init_h = nn.Linear(encoder_dim, hidden_dim)
        self.init_c = nn.Linear(encoder_dim, hidden_dim)
        # h_{t-1} -> [W_hh h (4H gates) | W_h h (attention) | f_beta(h) (gate scalar)]
        self.hidden_proj = nn.Linear(hidden_dim, 4 * hidden_dim + attention_dim + 1)
        self.input_gates = nn.Linear(embed_dim, 4 * hidden_dim, bias=False)
        self.context_gates = nn.Linear(encoder_dim, 4 * hidden_dim, bias=False)
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def init_state(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = grid.mean(dim=1)
        return tanh(self.init_h(mean)), tanh(self.init_c(mean))

    def project_grid(self, grid: torch.Tensor) -> State:
        """The per-batch products of the grid `[B, N, D]`: `W_e a`, and `W_c a` when the grid
        has few locations for its depth (then a step's `alpha @ W_c a` beats `W_c context`)."""
        memory = {"projected_grid": self.attention.project_grid(grid)}
        if 4 * grid.size(1) <= grid.size(2):
            memory["grid_gates"] = self.context_gates(grid)
        else:
            memory["grid"] = grid
        return memory

    def _cell(self, memory: State, word_gates, h, c):
        H, A = self.hidden_dim, self.attention_dim
        hidden_gates, W_h_h, f_beta = self.hidden_proj(h).split([4 * H, A, 1], dim=1)
        alpha = self.attention.weights(memory["projected_grid"], W_h_h)
        beta = torch.sigmoid(f_beta)
        gates = word_gates + hidden_gates  # a new tensor: the context adds into it in place
        if "grid_gates" in memory:  # W_c context_t = beta_t * sum_i alpha_ti (W_c a_i)
            gates.addcmul_(beta, attend(alpha, memory["grid_gates"]))
        else:
            gates.addmm_(beta * attend(alpha, memory["grid"]), self.context_gates.weight.t())
        gates[:, 2 * H : 3 * H] *= 2  # g: tanh(x) = 2 sigmoid(2x) - 1 (`recurrence.tanh`)
        i, f, g, o = torch.sigmoid(gates).chunk(4, dim=1)
        c = torch.addcmul(f * c, i, g.mul(2).sub_(1))
        h = o * tanh(c)
        return h, c, alpha

    def forward(self, grid: torch.Tensor, tokens: torch.Tensor):
        """Rows are sorted by caption length and step t runs only the rows still inside
        their caption (the batch shrinks as captions end); the positions inside captions are
        packed step after step, so the word and output layers skip the padding too. Padded
        positions get zero attention and zero logits: the loss ignores them (their targets are
        padding)."""
        B, T = tokens.shape
        lengths = (tokens != getattr(self, "pad_id", 0)).sum(1)  # models saved before pad_id
        order = lengths.argsort(descending=True)
        grid = grid_tokens(grid)[order]
        inside = lengths[order].unsqueeze(0) > torch.arange(T, device=tokens.device).unsqueeze(1)
        active = inside.sum(1).tolist()  # rows at each step
        steps, rows = inside.nonzero(as_tuple=True)  # [T, B] row-major: packed step by step
        rows = order[rows]
        memory = self.project_grid(grid)  # once per batch, not per step
        word_gates = self.word_gates(tokens[rows, steps])  # all steps at once
        h, c = self.init_state(grid)
        fused = grid.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        recurrence = self._fused if fused else self._stepwise
        hs, alphas = recurrence(memory, word_gates, h, c, active)
        logits = self.fc(self.dropout(hs))
        logits = logits.new_zeros(B, T, logits.size(1)).index_put((rows, steps), logits)
        return logits, alphas[order.argsort()]

    def word_gates(self, words: torch.Tensor) -> torch.Tensor:
        """The input-to-gate products `W_i E y` of `words` `[R]`: looked up in a table of the
        whole vocabulary's when that is the smaller product (a batch of captions holds more
        words than the vocabulary has: benchmark sizes, R = 1000 against V = 80: 12x fewer
        multiply-adds, in the backward too; `index_select`, whose backward is 1.4x quicker than
        `F.embedding`'s here), computed word by word otherwise."""
        if self.vocab_size < words.numel():
            return self.word_gate_table().index_select(0, words)
        return self.input_gates(self.embed(words))

    def word_gate_table(self) -> torch.Tensor:
        """`[V, 4H]`: every word's input-to-gate product."""
        return self.input_gates(self.embed.weight)

    def _fused(self, memory: State, word_gates, h, c, active: list[int]):
        """The recurrence as one autograd node with a hand-written backward
        (`recurrence.AttendedLSTM`, which gives its measured gain over `_stepwise`)."""
        if "grid_gates" in memory:
            values, context_weight = memory["grid_gates"], None
        else:
            values, context_weight = memory["grid"], self.context_gates.weight
        return AttendedLSTM.apply(
            word_gates, h, c, memory["projected_grid"], values, self.hidden_proj.weight,
            self.hidden_proj.bias, self.attention.w.weight[0], self.attention.w.bias,
            context_weight, active,
        )  # fmt: skip

    def _stepwise(self, memory: State, word_gates, h, c, active: list[int]):
        """`_cell` step by step under autograd (other devices, mixed precision)."""
        B, hs, alphas = h.size(0), [], []
        # split (not slices) so backward does not zero-fill per step
        for gates_t, n in zip(word_gates.split(active), active, strict=True):
            if n < h.size(0):
                memory = {key: value[:n] for key, value in memory.items()}
                h, c = h[:n], c[:n]
            h, c, alpha = self._cell(memory, gates_t, h, c)
            hs.append(h)
            alphas.append(F.pad(alpha, (0, 0, 0, B - n)))
        return torch.cat(hs), torch.stack(alphas, dim=1)

    def start(self, grid: torch.Tensor) -> tuple[State, State]:
        grid = grid_tokens(grid)
        h, c = self.init_state(grid)
        memory = self.project_grid(grid)
        # Every word's input-gate product, once per decode: a step looks its words up instead
        # of multiplying them (batched beam search, beam 3 over 100 images: 1.15x faster).
        memory["word_gates"] = self.word_gate_table()
        return memory, {"h": h, "c": c}

    def step(self, memory: State, state: State, tokens: torch.Tensor):
        word_gates = memory["word_gates"].index_select(0, tokens)
        h, c, alpha = self._cell(memory, word_gates, state["h"], state["c"])
        return F.log_softmax(self.fc(h).float(), dim=-1), alpha, {"h": h, "c": c}


def multihead_attention(
    attn: nn.MultiheadAttention, query, keys, *, causal: bool = False, need_weights: bool = False
):
    """`attn`'s multi-head attention of `query [B, T, E]` over `keys [B, N, E]` (the values
    too), with its parameters but without its module: `(output [B, T, E], weights averaged
    over heads [B, T, N] or None)`. In training, `nn.MultiheadAttention` packs the keys' and
    values' projections into one tensor that it copies apart, and zero-fills the gradient of
    each part in the backward: a fifth of a transformer step here. Written out, the
    projections stay views of one product, and attention whose weights are not needed takes
    the fused `scaled_dot_product_attention`. Dropout on the weights, as the module's."""
    E, heads = attn.embed_dim, attn.num_heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if keys is query:
        q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
    else:
        q = F.linear(query, weight[:E], bias[:E])
        k, v = F.linear(keys, weight[E:], bias[E:]).chunk(2, dim=-1)
    q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))
    p = attn.dropout if attn.training else 0.0
    if need_weights:
        scores = q @ k.transpose(2, 3) / math.sqrt(E // heads)
        if causal:
            T, N = scores.shape[2:]
            future = torch.ones(T, N, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = dropout(torch.softmax(scores, dim=-1), p, attn.training)
        out, alpha = weights @ v, weights.mean(dim=1)
    else:
        out, alpha = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal), None
    return attn.out_proj(out.transpose(1, 2).flatten(2)), alpha


class _DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer that returns its cross-attention weights."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), Dropout(dropout), nn.Linear(ff_dim, d_model)
        )
        self.dropout = Dropout(dropout)

    def forward(self, x, memory, need_weights: bool = True):
        """`need_weights=False` for a layer whose cross-attention weights are not returned
        (then alpha is None): it takes the fused kernel."""
        y = self.norm1(x)
        x = x + self.dropout(multihead_attention(self.self_attn, y, y, causal=True)[0])
        attended, alpha = multihead_attention(
            self.cross_attn, self.norm2(x), memory, need_weights=need_weights
        )
        x = x + self.dropout(attended)
        return x + self.dropout(self.ff(self.norm3(x))), alpha


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
        self.vocab_size, self.encoder_dim, self.grid_size = (
            vocab_size,
            encoder_dim,
            tuple(grid_size),
        )
        self.d_model, self.max_len = d_model, max_len
        self.memory_proj = nn.Sequential(nn.Linear(encoder_dim, d_model), nn.LayerNorm(d_model))
        self.grid_position = nn.Parameter(torch.zeros(1, math.prod(grid_size), d_model))
        nn.init.normal_(self.grid_position, std=0.02)
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.position = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(
            _DecoderLayer(d_model, heads, ff_dim, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(d_model, vocab_size)

    def encode(self, grid: torch.Tensor) -> torch.Tensor:
        if tuple(grid.shape[2:]) != self.grid_size:
            raise ValueError(
                f"decoder was built for a {self.grid_size} grid, got {tuple(grid.shape[2:])}"
            )
        return self.memory_proj(grid_tokens(grid)) + self.grid_position

    def _decode(self, memory: torch.Tensor, tokens: torch.Tensor):
        T = tokens.size(1)
        if T > self.max_len:
            raise ValueError(f"caption of {T} tokens is longer than max_len={self.max_len}")
        positions = torch.arange(T, device=tokens.device)
        x = self.dropout(self.embed(tokens) * math.sqrt(self.d_model) + self.position(positions))
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):  # alpha: the last layer's
            x, alpha = layer(x, memory, need_weights=i == last)
        return self.fc(self.norm(x)), alpha

    def forward(self, grid: torch.Tensor, tokens: torch.Tensor):
        return self._decode(self.encode(grid), tokens)

    def start(self, grid: torch.Tensor) -> tuple[State, State]:
        """Memory: the grid tokens' cross-attention keys and values of every layer, projected
        once. State: every layer's self-attention keys and values of the words so far (a
        cache), so a step runs one new token through the layers instead of the whole prefix."""
        encoded = self.encode(grid)
        memory, state = {}, {}
        for i, layer in enumerate(self.layers):
            attn = layer.cross_attn
            d = attn.embed_dim
            w, b = attn.in_proj_weight[d:], attn.in_proj_bias[d:]
            k, v = F.linear(encoded, w, b).chunk(2, dim=-1)
            # contiguous once here, or every step's matmul would copy them
            memory[f"k{i}"] = self._heads(k, attn).contiguous()
            memory[f"v{i}"] = self._heads(v, attn).contiguous()
            empty = encoded.new_zeros(grid.size(0), attn.num_heads, 0, d // attn.num_heads)
            state[f"k{i}"], state[f"v{i}"] = empty, empty
        return memory, state

    @staticmethod
    def _heads(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
        """[B, T, D] -> [B, heads, T, D / heads]."""
        return x.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    @staticmethod
    def _attend(attn: nn.MultiheadAttention, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
        """One query per row `q [B * K, heads, d]` against keys/values `[B, heads, N, d]` (K
        rows, e.g. beams, per row of keys): (output [B * K, D], weights [B * K, heads, N])."""
        B, heads, N, d = k.shape
        q = q.view(B, -1, heads, d).transpose(1, 2)  # [B, heads, K, d]: one matmul per image
        weights = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d), dim=-1)
        out = (weights @ v).transpose(1, 2).flatten(2).flatten(0, 1)
        return attn.out_proj(out), weights.transpose(1, 2).flatten(0, 1)

    def step(self, memory: State, state: State, tokens: torch.Tensor):
        t = state["k0"].size(2)
        if t >= self.max_len:
            raise ValueError(f"caption of {t + 1} tokens is longer than max_len={self.max_len}")
        position = torch.full_like(tokens, t)
        x = self.embed(tokens) * math.sqrt(self.d_model) + self.position(position)
        state = dict(state)
        alpha = None
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
            k = torch.cat([state[f"k{i}"], self._heads(k.unsqueeze(1), attn)], dim=2)
            v = torch.cat([state[f"v{i}"], self._heads(v.unsqueeze(1), attn)], dim=2)
            state[f"k{i}"], state[f"v{i}"] = k, v
            x = x + self._attend(attn, q.unflatten(-1, (attn.num_heads, -1)), k, v)[0]
            cross = layer.cross_attn
            d = cross.embed_dim
            q = F.linear(layer.norm2(x), cross.in_proj_weight[:d], cross.in_proj_bias[:d])
            attended, weights = self._attend(
                cross, q.unflatten(-1, (cross.num_heads, -1)), memory[f"k{i}"], memory[f"v{i}"]
            )
            x = x + attended
            x = x + layer.ff(layer.norm3(x))
            alpha = weights.mean(dim=1)  # the last layer's, averaged over heads
        logits = self.fc(self.norm(x))
        return F.log_softmax(logits.float(), dim=-1), alpha, state


DECODERS: dict[str, type[nn.Module]] = {
    "lstm_attention": LSTMAttentionDecoder,
    "transformer": TransformerDecoder,
}


def available() -> list[str]:
    return sorted(DECODERS)


def create_decoder(name: str, **options) -> nn.Module:
    """`create_decoder("lstm_attention", vocab_size=, encoder_dim=, grid_size=, ...)`."""
    if name not in DECODERS:
        raise KeyError(f"unknown decoder {name!r}; valid names: {', '.join(available())}")
    return DECODERS[name](**options)
