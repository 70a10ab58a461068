"""The prompt side of a generator: the workspace tokenizer's ids, padded to one fixed length,
and a small trainable token encoder (embedding, positions, a `nn.TransformerEncoder`) whose
states the U-Net cross-attends to. The empty prompt (`<start> <end>`) is the null condition of
classifier-free guidance, so "no condition" is a prompt the encoder has seen in training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmlab.data.text import Vocabulary, tokenize


class PromptError(ValueError):
    """A prompt the generator cannot take (empty, or nothing but punctuation)."""


def unknown_words(vocab: Vocabulary, prompt: str) -> list[str]:
    """The words of `prompt` outside `vocab` (they become `<unk>`), in order, once each."""
    return list(dict.fromkeys(w for w in tokenize(prompt) if w not in vocab))


def check_prompts(prompts) -> list[str]:
    """The prompts as strings; an empty one (no word left once tokenized) is an error."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise PromptError("no prompt given: pass at least one sentence")
    for i, prompt in enumerate(prompts):
        if not tokenize(prompt):
            raise PromptError(
                f"prompt {i} ({prompt!r}) is empty: write a sentence such as 'a red circle'"
            )
    return prompts


def encode_prompts(vocab: Vocabulary, prompts: list[str], length: int) -> Tensor:
    """`[B, length]` token ids: `<start>`, at most `length - 2` words, `<end>`, then `<pad>`."""
    ids = torch.full((len(prompts), length), vocab.pad_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        encoded = vocab.encode(prompt, max_len=length - 2)
        ids[row, : len(encoded)] = torch.tensor(encoded)
    return ids


def null_prompt(vocab: Vocabulary, batch: int, length: int) -> Tensor:
    """The unconditional prompt: `<start> <end>`, repeated `batch` times."""
    return encode_prompts(vocab, [""], length).expand(batch, length)


class TextEncoder(nn.Module):
    """Token states `[B, L, width]` of padded prompt ids: embedding plus learned positions,
    then `layers` pre-norm transformer encoder layers that skip the padding."""

    def __init__(
        self, vocab_size: int, length: int, width: int = 64, layers: int = 2, heads: int = 4
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, length, width))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pad_id = Vocabulary.pad_id

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids) + self.position[:, : ids.shape[1]]
        return self.norm(self.encoder(x, src_key_padding_mask=ids == self.pad_id))
