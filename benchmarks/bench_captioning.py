"""Captioning speed: training tokens/s and beam-search captions/s against straightforward baselines.

1. Training: `LSTMAttentionDecoder` against the common tutorial implementation written below
   (LSTMCell; the grid's attention projection `W_e a` recomputed at every time step; the batch
   sorted by length and shrunk as captions end; the output layer applied step by step). Same
   sizes, same batches, same loss (cross-entropy + doubly stochastic penalty), same optimiser
   step (the library's AdamW, `mmlab.train.optim.adamw`). Target: >= 2x.
2. Beam search: all images at once (`decode.beam_search` on a batch) against one image at a
   time, same model and beam size; the captions must be identical. Target: >= 8x.

Both at three sizes: the notebooks' (`default`) and the published tutorial's own (embed,
hidden and attention 512, batch 32, dropout 0.5, its COCO vocabulary of 9490 words) on a
ResNet-101 grid (2048 x 14 x 14) and an EfficientNet-B0 grid (1280 x 8 x 8); ours with
`compile` off and on (`torch.compile` of the decoder's step) and, with `--amp on`, under the
training loop's autocast (bfloat16; float16 with loss scaling on GPUs without it). The
tutorial trains as it is written, in float32. `--device cuda` runs everything on the GPU.

    .venv/bin/python benchmarks/bench_captioning.py [--sizes default] [--compile off]
        [--amp on] [--device cuda]

Decoders have random weights (their captions run to max_len). Rounds alternate baseline and
ours, and medians are reported, so load from other processes hits both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from mmlab.captioning import decode as decoding
from mmlab.captioning.decoders import LSTMAttentionDecoder
from mmlab.captioning.train import caption_loss
from mmlab.features.device import resolve_device
from mmlab.train import loop
from mmlab.train.optim import adamw

TUTORIAL = dict(vocab=9490, embed=512, hidden=512, attention=512, batch_size=32, dropout=0.5)
SIZES = {
    "default": dict(
        dim=112,
        grid=(8, 8),
        vocab=80,
        embed=128,
        hidden=256,
        attention=128,
        batch_size=64,
        dropout=0.3,
    ),
    "tutorial 2048x14x14": dict(dim=2048, grid=(14, 14), **TUTORIAL),
    # for a check that the script runs (benchmarks/gpu_check.sh --small), not for its figures
    "small": dict(
        dim=16, grid=(4, 4), vocab=20, embed=16, hidden=32, attention=16, batch_size=8, dropout=0.1
    ),
    "tutorial 1280x8x8": dict(dim=1280, grid=(8, 8), **TUTORIAL),
}


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
        predictions = torch.zeros(B, T, self.fc.out_features, device=grid.device)
        alphas = torch.zeros(B, T, encoder_out.size(1), device=grid.device)
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


def batches(n_batches, batch_size, vocab_size, dim, grid, seed=0, device="cpu"):
    """Random grids and captions of 8..20 words (like the synthetic captions), padded with 0;
    grids and tokens on `device`, lengths on the CPU (the tutorial sorts them there)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(8, 21, (batch_size,), generator=g) + 2  # <start> .. <end>
        tokens = torch.randint(3, vocab_size, (batch_size, int(lengths.max())), generator=g)
        tokens[:, 0] = 1
        for i, n in enumerate(lengths.tolist()):
            tokens[i, n - 1] = 2
            tokens[i, n:] = 0
        grids = torch.randn(batch_size, dim, *grid, generator=g)
        out.append((grids.to(device), tokens.to(device), lengths))
    return out


def device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device) -> None:
    """Wait for the GPU's queued work, so that a clock read after it has timed it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_tokens_per_second(model, optimizer, data, ours: bool, penalty=1.0, amp=False) -> float:
    """Tokens/s of training steps, as the loop takes them (`amp`: its autocast and scaler)."""
    model.train()
    device = data[0][0].device
    scaler = loop.grad_scaler(device, amp)
    synchronize(device)
    start, tokens_seen = time.perf_counter(), 0
    for grid, tokens, lengths in data:
        with loop.autocast(device, amp):
            if ours:
                logits, alpha = model(grid, tokens[:, :-1])
                targets = tokens[:, 1:]
            else:
                logits, alpha, targets = model(grid, tokens, lengths)
        loss, _ = caption_loss(logits, alpha, targets, 0, penalty)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        tokens_seen += int((lengths - 1).sum())
    synchronize(device)
    return tokens_seen / (time.perf_counter() - start)


def decoders(size, compiled: bool, device="cpu"):
    """`{name: decoder}`: ours eager (and compiled) from one initialisation, on `device`."""
    torch.manual_seed(0)
    ours = LSTMAttentionDecoder(
        size["vocab"],
        size["dim"],
        size["grid"],
        embed_dim=size["embed"],
        hidden_dim=size["hidden"],
        attention_dim=size["attention"],
        dropout=size["dropout"],
    ).to(device)
    models = {"ours": ours}
    if compiled:
        models["ours, compiled"] = copy.deepcopy(ours)
        models["ours, compiled"].compile()
    return models


def bench_training(name, size, args) -> dict[str, float]:
    """Tokens/s of the tutorial decoder and of ours (eager, AMP, compiled), medians of rounds."""
    torch.manual_seed(0)
    models = {
        "tutorial": TutorialDecoder(
            size["vocab"],
            size["dim"],
            size["embed"],
            size["hidden"],
            size["attention"],
            size["dropout"],
        ).to(args.device),
        **decoders(size, args.compile == "on", args.device),
    }
    amp = {key: False for key in models}
    if args.amp == "on":  # the same decoders again under autocast: weights of their own
        for key in [k for k in models if k != "tutorial"]:
            models[f"{key}, AMP"] = copy.deepcopy(models[key])
            amp[f"{key}, AMP"] = True
    optimizers = {key: adamw(m.parameters(), 1e-3, 0.01, args.device) for key, m in models.items()}
    shape = (size["batch_size"], size["vocab"], size["dim"], size["grid"])
    data = batches(args.train_batches, *shape, device=args.device)
    warm = batches(2, *shape, seed=1, device=args.device)
    for key, model in models.items():  # warm-up (and compilation) on other batches
        train_tokens_per_second(model, optimizers[key], warm, key != "tutorial", amp=amp[key])
    rates = {key: [] for key in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            rate = train_tokens_per_second(
                model, optimizers[key], data, key != "tutorial", amp=amp[key]
            )
            rates[key].append(rate)
    return {key: statistics.median(values) for key, values in rates.items()}


def bench_beam(name, size, args) -> dict[str, float]:
    """Captions/s of beam search one image at a time and batched (eager, compiled)."""
    models = decoders(size, args.compile == "on", args.device)
    grids = torch.randn(
        args.images, size["dim"], *size["grid"], generator=torch.Generator().manual_seed(1)
    ).to(args.device)
    options = dict(beam_size=args.beam, start_id=1, end_id=2, pad_id=0, max_len=args.max_len)
    for model in models.values():
        model.eval()
        decoding.beam_search(model, grids[:2], **options)  # warm-up (and compilation)
    times = {key: [] for key in ("one image at a time", *models)}
    for _ in range(args.rounds):  # alternate, report medians: load from elsewhere hits both
        started = time.perf_counter()
        singles = [
            decoding.beam_search(models["ours"], grids[i : i + 1], **options).tokens[0]
            for i in range(args.images)
        ]
        synchronize(args.device)
        times["one image at a time"].append(time.perf_counter() - started)
        for key, model in models.items():
            started = time.perf_counter()
            batched = decoding.beam_search(model, grids, **options)
            synchronize(args.device)
            times[key].append(time.perf_counter() - started)
            identical = sum(a == b for a, b in zip(batched.tokens, singles, strict=True))
            if identical != args.images:
                raise SystemExit(
                    f"{name}: batched beam search ({key}) and one image at a time disagree on "
                    f"{args.images - identical} of {args.images} captions"
                )
    return {key: args.images / statistics.median(values) for key, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sizes", nargs="+", default=[k for k in SIZES if k != "small"], choices=list(SIZES)
    )
    parser.add_argument(
        "--compile",
        choices=("off", "on"),
        default="on",
        help="also measure ours under torch.compile",
    )
    parser.add_argument(
        "--amp", choices=("off", "on"), default="off", help="also train ours under autocast"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA if there is one)")
    parser.add_argument("--parts", nargs="+", default=["train", "beam"], choices=["train", "beam"])
    parser.add_argument("--train-batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=20)
    args = parser.parse_args()
    args.device = str(resolve_device(args.device))
    torch.set_num_threads(args.threads)
    print(
        f"device {device_name(args.device)}, {args.threads} thread(s), {args.rounds} rounds, "
        f"medians; beam {args.beam}, {args.images} images, max_len {args.max_len}\n",
        flush=True,
    )
    train_rows, beam_rows = [], []
    for name in args.sizes:
        size = SIZES[name]
        if "train" in args.parts:
            rates = bench_training(name, size, args)
            base = rates.pop("tutorial")
            cells = " | ".join(f"{rate:.0f} ({rate / base:.2f}x)" for rate in rates.values())
            train_rows.append((f"| {name} | {base:.0f} | {cells} |", list(rates)))
            print(f"training, {name}: tutorial {base:.0f}, {cells} tokens/s", flush=True)
        if "beam" in args.parts:
            speeds = bench_beam(name, size, args)
            single = speeds.pop("one image at a time")
            cells = " | ".join(f"{speed:.1f} ({speed / single:.1f}x)" for speed in speeds.values())
            beam_rows.append(
                (f"| {name} | {single:.1f} | {cells} | {args.images}/{args.images} |", list(speeds))
            )
            print(
                f"beam search, {name}: one at a time {single:.1f}, {cells} captions/s", flush=True
            )
    if train_rows:
        keys = train_rows[0][1]
        print("Training, tokens/s (speed-up over the tutorial; target >= 2x):\n")
        print("| sizes | tutorial | " + " | ".join(keys) + " |")
        print("|---|---:|" + "---:|" * len(keys))
        print("\n".join(row for row, _ in train_rows) + "\n")
    if beam_rows:
        keys = beam_rows[0][1]
        print("Beam search, captions/s (speed-up over one image at a time; target >= 8x):\n")
        print(
            "| sizes | one image at a time | "
            + " | ".join(f"batched, {k}" for k in keys)
            + " | identical captions |"
        )
        print("|---|---:|" + "---:|" * len(keys) + "---:|")
        print("\n".join(row for row, _ in beam_rows) + "\n")


if __name__ == "__main__":
    main()
