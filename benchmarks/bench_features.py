"""Image feature extraction: the batched extractor against a naive one-image-at-a-time loop.

Same model, same images, same process. The extractor batches (16 by default: small batches
stay in the CPU cache), runs under inference_mode, folds batch norms into the convs and uses
channels_last. Prints images/s of both and their ratio, the channels_last effect, and the
achieved GFLOP/s against this machine's measured matmul GFLOP/s.

    .venv/bin/python benchmarks/bench_features.py [--encoder efficientnet_lite0] [--n 256]
        [--device cuda]

On a GPU the achieved rate is set against the GPU's float32 matmul rate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import mmlab.features as F


def images(n: int, side: int, seed: int = 0) -> list[Image.Image]:
    """Random blocky RGB images (decoded PIL, as a dataset hands them over)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (n, side // 8, side // 8, 3), dtype=np.uint8)
    return [Image.fromarray(a).resize((side, side), Image.Resampling.NEAREST) for a in small]


def naive(extractor, imgs) -> torch.Tensor:
    """What a first notebook does: one image at a time, no inference mode, default layout."""
    out = []
    device = extractor.device
    with torch.no_grad():
        for img in imgs:
            x = extractor.preprocess(img).unsqueeze(0).to(device).float().div(255)
            x = (x - extractor.mean) / extractor.std
            out.append(extractor.module(x).mean(dim=(2, 3)).cpu())
    return torch.cat(out)


def per_second(fn, n: int, repeats: int = 2) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_gflops(size: int = 2048, repeats: int = 5, device="cpu") -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

    def product():
        a @ b
        if a.is_cuda:
            torch.cuda.synchronize()

    product()
    seconds = min(_timed(product) for _ in range(repeats))
    return 2 * size**3 / seconds / 1e9


def flops_per_image(extractor) -> float:
    x = torch.zeros(1, 3, extractor.image_size, extractor.image_size, device=extractor.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        extractor.module(x)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA if there is one)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak's matmul")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = F.resolve_device(args.device)

    imgs = images(args.n, args.image_size)
    fast = F.create("image", args.encoder, image_size=args.image_size, device=device)
    plain = F.create(
        "image", args.encoder, image_size=args.image_size, device=device, channels_last=False
    )
    torch.testing.assert_close(fast.extract(imgs[:8]), naive(plain, imgs[:8]), rtol=1e-3, atol=1e-3)

    naive_ips = per_second(lambda: naive(plain, imgs), args.n)
    batched_ips = per_second(lambda: fast.extract(imgs, batch_size=args.batch_size), args.n)
    plain_ips = per_second(lambda: plain.extract(imgs, batch_size=args.batch_size), args.n)
    gflop_per_image = flops_per_image(fast) / 1e9
    peak = matmul_gflops(args.matmul_size, device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    print(
        f"encoder {args.encoder} at {args.image_size}px, {args.n} images, "
        f"batch {args.batch_size}, device {where}, {torch.get_num_threads()} torch threads"
    )
    print(f"naive loop (1 image/step, no_grad)       : {naive_ips:8.1f} images/s")
    print(f"batched, folded BN, contiguous           : {plain_ips:8.1f} images/s")
    print(f"batched, folded BN, channels_last        : {batched_ips:8.1f} images/s")
    print(f"speed-up over the naive loop             : {batched_ips / naive_ips:8.2f}x")
    print(f"channels_last effect                     : {batched_ips / plain_ips:8.2f}x")
    achieved = gflop_per_image * batched_ips
    print(f"model cost                               : {gflop_per_image:8.3f} GFLOP/image")
    print(f"achieved                                 : {achieved:8.1f} GFLOP/s")
    print(
        f"matmul on this device                    : {peak:8.1f} GFLOP/s "
        f"({100 * achieved / peak:.0f}% of it)"
    )


if __name__ == "__main__":
    main()
