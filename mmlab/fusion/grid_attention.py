"""`grid_cross_attention`: caption words attend over image-grid tokens that know their place.

The token encoders (`TOKEN_ENCODERS`) turn each modality into tokens; `GridCrossAttention`
lets the caption's words cross-attend over the others and reads where they looked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmlab.features.base import real_steps
from mmlab.fusion.base import FusionModule, InputSpec, head, projection
from mmlab.fusion.gru import BiGRU


class GridTokens(nn.Module):
    """An image feature grid [N, C, H, W] as H*W tokens with learned 2-D position embeddings."""

    def __init__(self, spec: InputSpec, hidden: int, dropout: float):
        super().__init__()
        h, w = spec.shape
        self.project = projection(spec.dim, hidden, 0.0)  # dropout here costs much, gains little
        self.rows = nn.Parameter(torch.randn(h, 1, hidden) * 0.02)
        self.cols = nn.Parameter(torch.randn(1, w, hidden) * 0.02)

    def forward(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        if grid.shape[-2:] != (self.rows.shape[0], self.cols.shape[1]):
            raise ValueError(
                f"grid input is {tuple(grid.shape[-2:])}, the model was built for "
                f"{(self.rows.shape[0], self.cols.shape[1])}"
            )
        tokens = self.project(grid.float().flatten(2).transpose(1, 2))  # [N, H*W, hidden]
        tokens = tokens + (self.rows + self.cols).flatten(0, 1)
        return tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool)


class SequenceTokens(nn.Module):
    """Precomputed sequence features [N, T, D] (all-zero rows are padding) + 1-D positions."""

    def __init__(self, spec: InputSpec, hidden: int, dropout: float):
        super().__init__()
        self.project = projection(spec.dim, hidden, dropout)
        self.positions = nn.Parameter(torch.randn(spec.shape[0], hidden) * 0.02)

    def forward(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        seq = seq.float()[:, : self.positions.shape[0]]
        return self.project(seq) + self.positions[: seq.shape[1]], real_steps(seq)


class PooledToken(nn.Module):
    """A pooled vector as a single token."""

    def __init__(self, spec: InputSpec, hidden: int, dropout: float):
        super().__init__()
        self.project = projection(spec.dim, hidden, dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.project(x.float()).unsqueeze(1)
        return tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool)


class GRUTokens(nn.Module):
    """A trainable text encoder: word embeddings and a bidirectional GRU over vocabulary ids."""

    def __init__(self, spec: InputSpec, hidden: int, dropout: float, embed_dim: int = 64):
        super().__init__()
        self.pad_id = spec.pad_id
        self.embed = nn.Embedding(spec.dim, embed_dim, padding_idx=spec.pad_id)
        self.gru = BiGRU(embed_dim, hidden // 2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = ids != self.pad_id
        # Each caption is read as its unpadded part (as if packed), so the backward direction
        # starts at its last word and its output does not depend on its batch's padding.
        return self.gru(self.dropout(self.embed(ids)), mask), mask


TOKEN_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "grid": GridTokens,
    "sequence": SequenceTokens,
    "pooled": PooledToken,
    "ids": GRUTokens,
}


class GridCrossAttention(FusionModule):
    """Words attend over image-grid tokens that know where they are, then reason about where.

    The query modality (the caption: a GRU over vocabulary ids, or sequence features) yields
    one token per word; the other modalities become tokens (a grid gets learned 2-D position
    embeddings). Each word cross-attends over them and is compared with what it found
    ([q, c, q * c, q - c]). Each word also knows *where* it looked: the expected grid
    coordinates under its attention (averaged over heads), and, for each of the `neighbours`
    words before and after it, how much their attention maps overlap and where that word
    looked relative to it. The words of one phrase ("small red circle") look at one object, so
    a colour that sits on another object shows as a low overlap long before attention is sharp
    enough for the words' own comparisons to catch it. A second bidirectional GRU reads the
    words with these locations, so "above" can compare where its two nouns were found: without
    it, relation negatives ("above" for "below") stay at chance. The head reads the mean and
    the maximum of the comparisons over the words (one word that finds nothing to match can
    decide) and the maximum of the located reading.

    Training adds masked words (`masked_words`, the objective's weight; 0 turns it off): in
    captions that describe their image (`described_class`; None: every caption), some words
    are hidden and must be named from the image, which teaches each phrase's words to find
    their object. Without it the match loss alone leaves binding to the initialisation's luck.
    """

    input_form = "tokens"
    accepts = ("grid", "sequence", "pooled", "ids")

    def __init__(
        self,
        specs,
        num_classes,
        hidden=128,
        dropout=0.1,
        heads=4,
        query="text",
        neighbours=6,
        masked_words=0.5,
        mask_rate=0.2,
        described_class=None,
    ):
        super().__init__(specs, num_classes)
        if query not in specs or len(specs) < 2:
            raise ValueError(
                f"grid_cross_attention needs the query modality {query!r} and at least one "
                f"other among {list(specs)}"
            )
        if specs[query].kind not in ("ids", "sequence"):
            raise ValueError(
                f"the query modality {query!r} must be ids or sequence, got {specs[query].kind}"
            )
        if not isinstance(neighbours, int) or neighbours < 0:
            raise ValueError(f"neighbours must be an int >= 0, got {neighbours!r}")
        if masked_words < 0 or not 0 <= mask_rate <= 1:
            raise ValueError(
                f"masked_words must be >= 0 and mask_rate in [0, 1], got {masked_words!r} and "
                f"{mask_rate!r}"
            )
        ids = [m for m, spec in specs.items() if m != query and spec.kind == "ids"]
        if ids:  # every memory token needs a location, and ids' token count is not fixed
            raise ValueError(
                f"grid_cross_attention attends over grid, sequence or pooled inputs; "
                f"{ids} are ids (only the query modality {query!r} may be)"
            )
        self.query = query
        self.token_encoders = nn.ModuleDict(
            {m: TOKEN_ENCODERS[s.kind](s, hidden, dropout) for m, s in specs.items()}
        )
        self.modality_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(hidden) * 0.02) for m in specs if m != query}
        )
        # Both sides normalised: centred keys make dot-product attention selective from the start.
        self.query_norm, self.memory_norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.cross_attention = nn.MultiheadAttention(
            hidden, heads, dropout=dropout, batch_first=True
        )
        self.compare = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.GELU(), nn.Dropout(dropout))
        # (row, col) in [-1, 1] of every memory token; non-grid tokens sit at the centre
        self.register_buffer("coordinates", self._coordinates(specs, query), persistent=False)
        # Only sequence memories have padding; a mask of no padding would cost a masked add.
        self.memory_padding = any(s.kind == "sequence" for m, s in specs.items() if m != query)
        self.neighbours = neighbours
        self.locate = nn.Linear(2 + 2 * neighbours * 3, hidden)  # location, (overlap, offset) each
        self.reason = BiGRU(2 * hidden, hidden // 2)
        self.head = head(3 * hidden, hidden, num_classes, dropout)
        # Masked-word training needs word ids and a word to hide them behind.
        text = specs[query]
        self.masked_words = masked_words if text.kind == "ids" and text.unk_id is not None else 0
        self.mask_rate, self.described_class = mask_rate, described_class
        self.word_head = (
            nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, text.dim))
            if self.masked_words
            else None
        )

    def compile(self, **options) -> None:
        """`torch.compile` each part in place: training runs `training_forward`, not
        `forward`, so compiling the whole module would leave training eager."""
        parts = [*self.token_encoders.values(), self.cross_attention, self.compare, self.locate]
        parts += [self.reason, self.head, *([self.word_head] if self.word_head else [])]
        for part in parts:
            part.compile(**{"dynamic": True, **options})

    @staticmethod
    def _coordinates(specs, query) -> Tensor:
        parts = []
        for m, spec in specs.items():
            if m == query:
                continue
            if spec.kind == "grid":
                h, w = spec.shape
                rows, cols = torch.meshgrid(
                    torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"
                )
                parts.append(torch.stack([rows.flatten(), cols.flatten()], dim=-1))
            else:
                parts.append(torch.zeros(spec.shape[0] if spec.kind == "sequence" else 1, 2))
        return torch.cat(parts)

    def _memory(self, inputs) -> tuple[Tensor, Tensor]:
        others = [m for m in self.modalities if m != self.query]
        parts = [self.token_encoders[m](inputs[m]) for m in others]
        tokens = [t + self.modality_embedding[m] for m, (t, _) in zip(others, parts, strict=True)]
        return torch.cat(tokens, dim=1), torch.cat([mask for _, mask in parts], dim=1)

    def _locations(self, alpha: Tensor, mask: Tensor) -> Tensor:
        """[N, T, 2 + 6K]: each word's expected (row, col), then for the word k = 1..K after
        and before it the overlap of their attention maps (1 for two uniform maps) and the
        offset of its location. Padding looks nowhere (no overlap, location (0, 0)); past the
        padded width there is no word (zeros)."""
        alpha = alpha * mask.unsqueeze(-1)
        location = alpha @ self.coordinates  # [N, T, 2]
        (N, T, M), K = alpha.shape, self.neighbours
        offsets = torch.tensor([*range(1, K + 1), *range(-1, -K - 1, -1)], device=alpha.device)
        other = torch.arange(T, device=alpha.device).unsqueeze(1) + offsets  # [T, 2K]
        present = ((other >= 0) & (other < T)).unsqueeze(-1)
        other = other.clamp(0, T - 1)
        # All pairs' overlaps in one product, then each word's 2K neighbours picked out of it.
        overlaps = (alpha @ alpha.transpose(1, 2)).gather(2, other.expand(N, T, -1)) * M
        neighbour = location[:, other]  # [N, T, 2K, 2]
        parts = torch.cat(
            [overlaps.unsqueeze(-1) * present, (neighbour - location.unsqueeze(2)) * present], -1
        )
        return torch.cat([location, parts.flatten(2)], dim=-1)

    def _attend(self, inputs, masked=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(word states, their mask, what each word found, its attention [N, T, M] averaged
        over heads). `masked` (rows, their captions with hidden words) appends those
        captions, each beside its row's image, so one pass reads both and the recurrences'
        per-step overhead is paid once."""
        ids = inputs[self.query]
        memory, m_mask = self._memory(inputs)
        if masked is not None:
            rows, masked_ids = masked
            ids, memory = torch.cat([ids, masked_ids]), torch.cat([memory, memory[rows]])
            m_mask = torch.cat([m_mask, m_mask[rows]])
        q, q_mask = self.token_encoders[self.query](ids)
        # Normalised after the copies, not before: the same values, but the gradient is summed
        # in another order, and the default seeds' trajectories are sensitive to it.
        memory = self.memory_norm(memory)
        padding = ~m_mask if self.memory_padding else None
        context, alpha = self.cross_attention(
            self.query_norm(q), memory, memory, key_padding_mask=padding
        )
        return q, q_mask, context, alpha

    def _hide_words(self, inputs, labels) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """(rows, their captions with words hidden, where, the hidden words' ids) for
        masked-word training: the captions that describe their image, a `mask_rate` of their
        words and at least one each; None when there is nothing to hide."""
        if not self.masked_words:
            return None
        ids = inputs[self.query]
        rows = torch.arange(len(ids), device=ids.device)
        if self.described_class is not None:
            rows = rows[labels == self.described_class]
        ids, spec = ids[rows], self.specs[self.query]
        words = ~torch.isin(ids, torch.tensor(spec.special_ids, device=ids.device))
        hidden = (torch.rand(ids.shape, device=ids.device) < self.mask_rate) & words
        one = (torch.rand(ids.shape, device=ids.device) * words).argmax(1)  # a word per caption
        hidden[torch.arange(len(ids), device=ids.device), one] = words.any(1)
        if not hidden.any():
            return None
        return rows, ids.masked_fill(hidden, spec.unk_id), hidden, ids[hidden]

    def training_forward(self, inputs, labels):
        """Logits, and the masked-word objective (as in UNITER's masked language modelling
        conditioned on the image): in the captions that describe their image some words
        become the unknown word, and each must be named from its state (built from the other
        words only), what that state finds in the image and its located reading. To name the
        colour hidden in "a small _ circle left of a square" the word must find the small
        circle, and to name a hidden "left" the nouns' places must be read: this teaches words
        to look at the object their phrase describes, which the match loss alone teaches
        slowly and, for some initialisations, never."""
        hide = self._hide_words(inputs, labels)
        if hide is None:
            return self(inputs), None
        rows, masked_ids, hidden, hidden_ids = hide
        q, q_mask, context, alpha = self._attend(inputs, (rows, masked_ids))
        compared, located = self._compare_and_locate(q, q_mask, context, alpha)
        n = len(labels)
        logits = self._match(q_mask[:n], compared[:n], located[:n])
        # The located reading names hidden relations ("left of") from where the nouns looked.
        named = self.word_head(torch.cat([q[n:], context[n:], located[n:]], dim=-1)[hidden])
        return logits, self.masked_words * F.cross_entropy(named, hidden_ids)

    def forward(self, inputs):
        q, q_mask, context, alpha = self._attend(inputs)
        return self._match(q_mask, *self._compare_and_locate(q, q_mask, context, alpha))

    def _compare_and_locate(self, q, q_mask, context, alpha) -> tuple[Tensor, Tensor]:
        """Each word compared with what it found, and its located reading."""
        compared = self.compare(torch.cat([q, context, q * context, q - context], dim=-1))
        where = self.locate(self._locations(alpha, q_mask))
        # Unpacked on purpose: the backward direction first reads the padding positions, whose
        # all-zero word states attend to a summary of the image, which learnt relations better
        # than packing did. The price: a caption's output depends on the padded width, which
        # is why `inputs.build` pads every split to one width.
        return compared, self.reason(torch.cat([compared, where], dim=-1))

    def _match(self, q_mask, compared, located):
        weight = q_mask.unsqueeze(-1).float()
        mean = (compared * weight).sum(1) / weight.sum(1).clamp_min(1)
        peak = compared.masked_fill(~q_mask.unsqueeze(-1), -1e4).amax(1)
        located = located.masked_fill(~q_mask.unsqueeze(-1), -1e4).amax(1)
        return self.head(torch.cat([mean, peak, located], dim=-1))
