"""Image captioning: a CNN grid encoder, an attention decoder, training and batched decoding.

    extractor = mmlab.features.create("image", "efficientnet_lite0", image_size=128,
                                      kind="grid", layer="mid")
    captioner = build("lstm_attention", GridEncoder(extractor), vocab)
    result = train_captioner(captioner, train, val, TrainConfig(epochs=8), on_epoch=log_epoch)
    log_captioner(captioner)
    load_captioner("runs:/<run_id>/model").caption([image], beam_size=3)

Decoders are looked up by name (`available()`); `decode` holds batched greedy and beam search."""

from __future__ import annotations

import torch

from mmlab.captioning import decode
from mmlab.captioning.decoders import DECODERS, available, create_decoder
from mmlab.captioning.encoder import GridEncoder
from mmlab.captioning.model import Captioner, Captions
from mmlab.captioning.saving import load_captioner, log_captioner, log_epoch
from mmlab.captioning.train import (
    CaptionData,
    FitResult,
    TrainConfig,
    caption_data,
    compare_decodings,
    score_captions,
    test_metrics,
    train_captioner,
)


def build(
    decoder: str,
    encoder: GridEncoder,
    vocab,
    *,
    max_len: int = 30,
    length_penalty: float = 1.0,
    seed: int | None = 0,
    **decoder_options,
) -> Captioner:
    """A `Captioner` with `decoder` (see `available()`) sized for `encoder` and `vocab`; its
    initial weights come from `seed` (None: the global RNG), independent of what ran before."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        sizes = dict(encoder_dim=encoder.dim, grid_size=encoder.grid_size, pad_id=vocab.pad_id)
        net = create_decoder(decoder, vocab_size=len(vocab), **sizes, **decoder_options)
    options = dict(decoder_options=decoder_options, max_len=max_len, length_penalty=length_penalty)
    return Captioner(encoder, net, vocab, decoder_name=decoder, **options)


__all__ = [
    "DECODERS",
    "CaptionData",
    "Captioner",
    "Captions",
    "FitResult",
    "GridEncoder",
    "TrainConfig",
    "available",
    "build",
    "caption_data",
    "compare_decodings",
    "create_decoder",
    "decode",
    "load_captioner",
    "log_captioner",
    "log_epoch",
    "score_captions",
    "test_metrics",
    "train_captioner",
]
