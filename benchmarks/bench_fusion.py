"""Fusion training speed: `grid_cross_attention` steps with `BiGRU` against `nn.GRU`.

The same model (the notebook's default sizes: an 8x8x112 grid, captions of 8-20 words over a
vocabulary of 56, batch 64, hidden 64; the match loss and the masked-word objective, as
`fusion.fit` trains it) trains on the same batches twice per round: once as
it is, once with both of its GRUs (the text encoder's, packed, and the reasoning one) run by
`nn.GRU` itself. Rounds alternate, and medians are reported, so load from other processes
hits both. Training steps also run with one thread, as in the notebook's worker processes.

    .venv/bin/python benchmarks/bench_fusion.py [--threads 1] [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mmlab import fusion
from mmlab.fusion import InputSpec
from mmlab.fusion.gru import BiGRU
from mmlab.optim import adamw


class PlainGRU(BiGRU):
    """`nn.GRU`'s own forward and autograd backward (packed when there is a mask)."""

    forward = BiGRU._reference


def batches(n, batch_size, vocab, dim, grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(8, 21, (batch_size,), generator=g) + 2
        ids = torch.randint(4, vocab, (batch_size, 23), generator=g)  # words: ids 0-3 special
        ids[torch.arange(23) >= lengths.unsqueeze(1)] = 0
        image = torch.randn(batch_size, dim, *grid, generator=g)
        out.append(({"image": image, "text": ids}, torch.randint(0, 2, (batch_size,), generator=g)))
    return out


def steps_per_second(model, data) -> float:
    optimiser = adamw(model.parameters(), 1e-3, 0.01, "cpu")  # the training loop's optimiser
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for inputs, labels in data:
        logits, masked_words = model.training_forward(inputs, labels)  # as `fusion.fit` does
        loss = loss_fn(logits, labels) + (0 if masked_words is None else masked_words)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return len(data) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    words = InputSpec("ids", 56, pad_id=0, unk_id=3, special_ids=(0, 1, 2, 3))
    specs = {"image": InputSpec("grid", 112, (8, 8)), "text": words}
    models = {}
    for name in ("nn.GRU", "BiGRU"):
        torch.manual_seed(0)
        models[name] = fusion.create("grid_cross_attention", specs, hidden=64, described_class=1)
    plain = models["nn.GRU"]
    plain.tokenizers["text"].gru.__class__ = PlainGRU
    plain.reason.__class__ = PlainGRU
    data = batches(args.steps, 64, 56, 112, (8, 8))
    for model in models.values():
        steps_per_second(model, data[:2])  # warm-up
    rates = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rates[name].append(steps_per_second(model, data))
    base, fast = (statistics.median(rates[name]) for name in ("nn.GRU", "BiGRU"))
    print(f"grid_cross_attention training, batch 64, hidden 64, {args.threads} thread(s):")
    print(f"  with nn.GRU   {base:7.1f} steps/s")
    print(f"  with BiGRU    {fast:7.1f} steps/s")
    print(f"  speed-up      {fast / base:7.2f}x")


if __name__ == "__main__":
    main()
