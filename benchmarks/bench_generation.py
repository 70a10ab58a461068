"""Generation speed: seconds per image of latent diffusion sampled with DDIM in 50 steps
against DDPM's ancestral sampler over all 1000 steps, and the VQ transformer's top-k sampling
with a key-value cache against recomputing the whole prefix at every token (the same tokens).

    .venv/bin/python benchmarks/bench_generation.py [--images 4] [--rounds 3]

Both at the notebook's default sizes, with untrained weights (speed does not depend on them),
guidance on (two passes per step, batched). Rounds alternate baseline and ours and medians are
reported, so load from other processes hits both; DDPM 1000 runs once per round."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmlab.data.text import Vocabulary
from mmlab.generation import base

WORDS = "a red green blue yellow circle square triangle cross above below left of the right"


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS.split())
    prompts = ["a red circle above a blue square"] * args.images
    diffusion = base.create("diffusion", vocab).eval()
    transformer = base.create("vq_transformer", vocab).eval()
    ids = transformer.prompt_ids(prompts)

    def sample(sampler, steps):
        generator = torch.Generator().manual_seed(0)
        return lambda: diffusion.sample(ids, 3.0, steps, generator, sampler=sampler)

    def tokens(cache):
        generator = torch.Generator().manual_seed(0)
        return lambda: transformer.sample_codes(ids, 3.0, generator, cache=cache)

    with torch.no_grad():
        sample("ddim", 2)()  # warm up both models' kernels
        tokens(True)()
        ddim, ddpm, cached, full = [], [], [], []
        for _ in range(args.rounds):
            ddpm.append(seconds(sample("ddpm", 1000)) / args.images)
            ddim.append(seconds(sample("ddim", 50)) / args.images)
            full.append(seconds(tokens(False)) / args.images)
            cached.append(seconds(tokens(True)) / args.images)
    m = statistics.median
    print(f"{args.images} images per call, guidance 3, medians of {args.rounds} rounds")
    print(
        f"latent diffusion: DDPM 1000 steps {m(ddpm):.3f} s/image, DDIM 50 steps "
        f"{m(ddim):.3f} s/image: DDIM {m(ddpm) / m(ddim):.1f}x faster"
    )
    print(
        f"VQ transformer ({transformer.tokens} tokens): no cache {m(full):.3f} s/image, "
        f"key-value cache {m(cached):.3f} s/image: {m(full) / m(cached):.1f}x faster"
    )


if __name__ == "__main__":
    main()
