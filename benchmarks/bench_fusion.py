"""Fusion training speed: `grid_cross_attention` and `concat` steps/s, with `compile` off and on.

The models have the notebook's default sizes (an 8x8x112 grid, captions of 8-20 words over a
vocabulary of 56, batch 64, hidden 64) and train as `fusion.train_fusion` trains them (the match loss,
plus the masked-word objective for grid_cross_attention), one thread each, as in the
notebook's worker processes. Rounds alternate the variants, and medians are reported, so load
from other processes hits all of them.

    .venv/bin/python benchmarks/bench_fusion.py [--threads 1] [--steps 20] [--rounds 5]
        [--device cuda] [--compile off]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from mmlab import fusion
from mmlab.features.device import resolve_device
from mmlab.fusion import InputSpec
from mmlab.train.optim import adamw


def batches(n, batch_size, vocab, dim, grid, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(8, 21, (batch_size,), generator=g) + 2
        ids = torch.randint(4, vocab, (batch_size, 23), generator=g)  # words: ids 0-3 special
        ids[torch.arange(23) >= lengths.unsqueeze(1)] = 0
        image = torch.randn(batch_size, dim, *grid, generator=g)
        pooled = {"image_pooled": image.mean((2, 3)), "text_pooled": torch.randn(batch_size, 384)}
        labels = torch.randint(0, 2, (batch_size,), generator=g)
        inputs = {"image": image, "text": ids, **pooled}
        out.append(({k: v.to(device) for k, v in inputs.items()}, labels.to(device)))
    return out


def steps_per_second(model, optimiser, data) -> float:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    cuda = data[0][1].is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for inputs, labels in data:
        logits, extra = model.training_forward(inputs, labels)  # as `fusion.train_fusion` does
        loss = loss_fn(logits, labels) + (0 if extra is None else extra)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if cuda:  # wait for the queued steps before reading the clock
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - start)


class Renamed(nn.Module):
    """A pooled method reading `<modality>_pooled` inputs (the batches carry both forms)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_forward(self, inputs, labels):
        return self.model({m: inputs[f"{m}_pooled"] for m in ("image", "text")}), None

    def compile(self, **options):
        self.model.compile(**options)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA if there is one)")
    parser.add_argument("--compile", choices=("off", "on"), default="on", help="also compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    words = InputSpec("ids", 56, pad_id=0, unk_id=3, special_ids=(0, 1, 2, 3))
    methods = {
        "grid_cross_attention": lambda: fusion.create(
            "grid_cross_attention",
            {"image": InputSpec("grid", 112, (8, 8)), "text": words},
            hidden=64,
            described_class=1,
        ),
        "concat": lambda: Renamed(fusion.create("concat", {"image": 112, "text": 384}, hidden=64)),
    }
    data = batches(args.steps, 64, 56, 112, (8, 8), device=device)
    warm = batches(3, 64, 56, 112, (8, 8), seed=1, device=device)
    rows = []
    for name, make in methods.items():
        torch.manual_seed(0)
        models = {"eager": make().to(device)}
        if args.compile == "on":
            models["compiled"] = copy.deepcopy(models["eager"])
            models["compiled"].compile()
        optimisers = {k: adamw(m.parameters(), 1e-3, 0.01, device) for k, m in models.items()}
        for key, model in models.items():  # warm-up (and compilation) on other batches
            steps_per_second(model, optimisers[key], warm)
        rates = {key: [] for key in models}
        for _ in range(args.rounds):
            for key, model in models.items():
                rates[key].append(steps_per_second(model, optimisers[key], data))
        eager = statistics.median(rates["eager"])
        row = f"| {name} | {eager:.1f} |"
        if "compiled" in rates:
            compiled = statistics.median(rates["compiled"])
            row += f" {compiled:.1f} ({compiled / eager:.2f}x) |"
        rows.append(row)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"Training steps/s, batch 64, hidden 64, device {where}, {args.threads} thread(s), "
        f"{args.rounds} rounds of {args.steps} steps, medians:\n"
    )
    print("| method | compile off |" + (" compile on |" if args.compile == "on" else ""))
    print("|---|---:|" + ("---:|" if args.compile == "on" else ""))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
