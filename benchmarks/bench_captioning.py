"""Captioning speed: training tokens/s and beam-search captions/s against straightforward baselines.

1. Training: `LSTMAttentionDecoder` against the common tutorial implementation written below
   (LSTMCell; the grid's attention projection `W_e a` recomputed at every time step; the batch
   sorted by length and shrunk as captions end; the output layer applied step by step). Same
   sizes, same batches, same loss (cross-entropy + doubly stochastic penalty), same optimiser
   step (the library's fused AdamW, `mmlab.optim.adamw`). Target: >= 2x.
2. Beam search: all images at once (`decode.beam_search` on a batch) against one image at a
   time, same model and beam size; the captions must be identical. Target: >= 8x.

    .venv/bin/python benchmarks/bench_captioning.py [--threads 2] [--model runs:/<id>/model]

Without `--model`, a decoder with random weights is used (its captions run to max_len). Rounds
alternate baseline and ours, and medians are reported, so load from other processes hits both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mmlab.captioning import decode as decoding
from mmlab.captioning.decoders import LSTMAttentionDecoder, create_decoder
from mmlab.captioning.train import caption_loss
from mmlab.optim import adamw


class TutorialAttention(nn.Module):
    def __init__(self, encoder_dim, hidden_dim, attention_dim):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, encoder_out, h):
        att1 = self.encoder_att(encoder_out)  # recomputed at every time step
        att2 = self.decoder_att(h)
        att = self.full_att(torch.tanh(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = torch.softmax(att, dim=1)
        return (encoder_out * alpha.unsqueeze(2)).sum(dim=1), alpha


class TutorialDecoder(nn.Module):
    """Show, Attend and Tell as the popular PyTorch tutorial writes it (same sizes as ours)."""

    def __init__(self, vocab_size, encoder_dim, embed_dim, hidden_dim, attention_dim, dropout):
        super().__init__()
        self.attention = TutorialAttention(encoder_dim, hidden_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, hidden_dim)
        self.init_h = nn.Linear(encoder_dim, hidden_dim)
        self.init_c = nn.Linear(encoder_dim, hidden_dim)
        self.f_beta = nn.Linear(hidden_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def forward(self, grid, tokens, lengths):
        encoder_out = grid.flatten(2).transpose(1, 2)
        lengths, order = lengths.sort(descending=True)
        encoder_out, tokens = encoder_out[order], tokens[order]
        embeddings = self.embedding(tokens)
        mean = encoder_out.mean(dim=1)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        decode_lengths = (lengths - 1).tolist()
        B, T = tokens.size(0), max(decode_lengths)
        predictions = torch.zeros(B, T, self.fc.out_features)
        alphas = torch.zeros(B, T, encoder_out.size(1))
        for t in range(T):
            bt = sum(n > t for n in decode_lengths)
            context, alpha = self.attention(encoder_out[:bt], h[:bt])
            context = torch.sigmoid(self.f_beta(h[:bt])) * context
            h, c = self.decode_step(
                torch.cat([embeddings[:bt, t], context], dim=1), (h[:bt], c[:bt])
            )
            predictions[:bt, t] = self.fc(self.dropout(h))
            alphas[:bt, t] = alpha
        return predictions, alphas, tokens[:, 1 : T + 1]


def batches(n_batches, batch_size, vocab_size, dim, grid, seed=0):
    """Random grids and captions of 8..20 words (like the synthetic captions), padded with 0."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(8, 21, (batch_size,), generator=g) + 2  # <start> .. <end>
        tokens = torch.randint(3, vocab_size, (batch_size, int(lengths.max())), generator=g)
        tokens[:, 0] = 1
        for i, n in enumerate(lengths.tolist()):
            tokens[i, n - 1] = 2
            tokens[i, n:] = 0
        out.append((torch.randn(batch_size, dim, *grid, generator=g), tokens, lengths))
    return out


def train_tokens_per_second(model, data, ours: bool, penalty=1.0) -> float:
    optimizer = adamw(model.parameters(), 1e-3, 0.01, "cpu")  # the library's, for both sides
    model.train()
    start, tokens_seen = time.perf_counter(), 0
    for grid, tokens, lengths in data:
        if ours:
            logits, alpha = model(grid, tokens[:, :-1])
            loss, _ = caption_loss(logits, alpha, tokens[:, 1:], 0, penalty)
        else:
            logits, alpha, targets = model(grid, tokens, lengths)
            loss, _ = caption_loss(logits, alpha, targets, 0, penalty)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        tokens_seen += int((lengths - 1).sum())
    return tokens_seen / (time.perf_counter() - start)


def bench_training(args):
    sizes = dict(embed_dim=128, hidden_dim=args.hidden, attention_dim=args.attention, dropout=0.3)
    torch.manual_seed(0)
    ours = LSTMAttentionDecoder(args.vocab, args.dim, args.grid, **sizes)
    baseline = TutorialDecoder(args.vocab, args.dim, **sizes)
    data = batches(args.train_batches, args.batch_size, args.vocab, args.dim, args.grid)
    train_tokens_per_second(ours, data[:1], True)  # warm-up
    train_tokens_per_second(baseline, data[:1], False)
    rates = {"baseline": [], "ours": []}
    for _ in range(args.rounds):
        rates["baseline"].append(train_tokens_per_second(baseline, data, False))
        rates["ours"].append(train_tokens_per_second(ours, data, True))
    base, fast = statistics.median(rates["baseline"]), statistics.median(rates["ours"])
    print(
        f"training, grid {args.grid[0]}x{args.grid[1]}x{args.dim}, batch {args.batch_size}, "
        f"hidden {args.hidden}, attention {args.attention}:"
    )
    print(f"  tutorial (W_e a per step)  {base:9.0f} tokens/s")
    print(f"  mmlab lstm_attention       {fast:9.0f} tokens/s")
    print(f"  speed-up                   {fast / base:9.2f}x  (target >= 2x)")
    return fast / base


def bench_beam(args):
    if args.model:
        from mmlab.captioning import load_captioner

        captioner = load_captioner(args.model, device="cpu")
        decoder, vocab = captioner.decoder, captioner.vocab
        start_id, end_id, pad_id = vocab.start_id, vocab.end_id, vocab.pad_id
        dim, grid = captioner.encoder.dim, captioner.grid_size
    else:
        torch.manual_seed(0)
        decoder = create_decoder(args.decoder, vocab_size=args.vocab, encoder_dim=args.dim,
                                 grid_size=args.grid)  # fmt: skip
        start_id, end_id, pad_id, dim, grid = 1, 2, 0, args.dim, args.grid
    decoder.eval()
    grids = torch.randn(args.images, dim, *grid, generator=torch.Generator().manual_seed(1))
    options = dict(
        beam_size=args.beam, start_id=start_id, end_id=end_id, pad_id=pad_id, max_len=args.max_len
    )
    batched_times, single_times = [], []
    for _ in range(args.rounds):  # alternate, report medians: load from elsewhere hits both
        started = time.perf_counter()
        batched = decoding.beam_search(decoder, grids, **options)
        batched_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        singles = [
            decoding.beam_search(decoder, grids[i : i + 1], **options).tokens[0]
            for i in range(args.images)
        ]
        single_times.append(time.perf_counter() - started)
    batched_s, single_s = statistics.median(batched_times), statistics.median(single_times)
    identical = sum(a == b for a, b in zip(batched.tokens, singles, strict=True))
    print(
        f"beam search, beam {args.beam}, {args.images} images, max_len {args.max_len}"
        f"{' (' + args.model + ')' if args.model else ' (random weights)'}:"
    )
    print(f"  one image at a time        {args.images / single_s:9.1f} captions/s")
    print(f"  batched                    {args.images / batched_s:9.1f} captions/s")
    print(f"  speed-up                   {single_s / batched_s:9.2f}x  (target >= 8x)")
    print(f"  identical captions         {identical}/{args.images}")
    if identical != args.images:
        raise SystemExit("batched and one-at-a-time beam search disagree")
    return single_s / batched_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=112)  # EfficientNet-Lite0 mid-level grid
    parser.add_argument("--grid", type=int, nargs=2, default=(8, 8))
    parser.add_argument("--vocab", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--attention", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--model", default=None, help="a logged captioner to decode with")
    parser.add_argument("--decoder", default="lstm_attention", help="beam search: decoder name")
    args = parser.parse_args()
    args.grid = tuple(args.grid)
    torch.set_num_threads(args.threads)
    bench_training(args)
    bench_beam(args)


if __name__ == "__main__":
    main()
