"""`Captioner`: encoder, decoder and vocabulary in one module that turns images into captions.
`caption`, `decode`, `decode_grids` (cached grids) return attention per image, `[n_words, H, W]`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmlab.captioning import decode as decoding
from mmlab.captioning.encoder import GridEncoder


@dataclass
class Captions:
    captions: list[str]
    words: list[list[str]]
    log_prob: torch.Tensor  # [B] summed over the words and <end>
    mean_log_prob: torch.Tensor  # [B] per scored token
    attention: list[torch.Tensor] | None  # per image [n_words, H, W]
    grid_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.captions)


class Captioner(nn.Module):
    def __init__(
        self,
        encoder: GridEncoder,
        decoder: nn.Module,
        vocab,
        *,
        decoder_name: str = "",
        decoder_options: dict | None = None,
        max_len: int = 30,
        length_penalty: float = 1.0,
    ):
        super().__init__()
        self.encoder, self.decoder, self.vocab = encoder, decoder, vocab
        # name and options rebuild the decoder when a saved model loads (weights come apart)
        self.decoder_name, self.decoder_options = decoder_name, dict(decoder_options or {})
        self.max_len, self.length_penalty = max_len, length_penalty

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.grid_size

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def grid(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pixels (uint8 `[B, 3, S, S]`) go through the encoder; float grids pass as they are."""
        return self.encoder(inputs) if inputs.dtype == torch.uint8 else inputs

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor):
        """Teacher forcing: `(logits [B, T, V], alpha [B, T, N])` for input tokens `[B, T]`."""
        return self.decoder(self.grid(inputs), tokens)

    @torch.no_grad()
    def decode_grids(
        self,
        grids: torch.Tensor,
        beam_size: int = 3,
        *,
        batch_size: int = 128,
        return_attention: bool = True,
        max_len: int | None = None,
        length_penalty: float | None = None,
    ) -> Captions:
        """Caption precomputed inputs: grids `[N, D, H, W]` (e.g. from the feature cache) or
        uint8 pixels `[N, 3, S, S]`, in batches of `batch_size` images."""
        penalty = self.length_penalty if length_penalty is None else length_penalty
        options = dict(beam_size=beam_size, max_len=max_len or self.max_len, length_penalty=penalty)
        ids = dict(start_id=self.vocab.start_id, end_id=self.vocab.end_id, pad_id=self.vocab.pad_id)
        was_training = self.training
        self.eval()
        parts = []
        try:
            for chunk in torch.split(grids, batch_size):
                grid = self.grid(chunk.to(self.device))
                parts.append(decoding.decode(self.decoder, grid, **options, **ids))
        finally:
            self.train(was_training)
        return self._captions(parts, return_attention)

    def decode(
        self,
        images,
        beam_size: int = 3,
        *,
        return_attention: bool = True,
        batch_size: int = 64,
        **options,
    ) -> Captions:
        """Caption a list of PIL images."""
        if not len(images):
            raise ValueError("decode() needs at least one image")
        options.update(batch_size=batch_size, return_attention=return_attention)
        return self.decode_grids(self.encoder.pixels(images), beam_size, **options)

    def caption(self, images, beam_size: int = 3, **options) -> list[str]:
        return self.decode(images, beam_size, return_attention=False, **options).captions

    def _captions(self, parts: list[decoding.Decoded], return_attention: bool) -> Captions:
        tokens = [t for p in parts for t in p.tokens]
        words = [[self.vocab.decode([i]) for i in t] for t in tokens]
        log_prob = torch.cat([p.log_prob for p in parts])
        mean = torch.cat([p.mean_log_prob for p in parts])
        attention = None
        if return_attention:
            H, W = self.grid_size
            attention = [a.view(-1, H, W) for p in parts for a in p.attention]
        return Captions(
            [self.vocab.decode(t) for t in tokens], words, log_prob, mean, attention, self.grid_size
        )
