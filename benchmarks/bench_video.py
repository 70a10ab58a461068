"""Video encoders' cost per clip: `frame_mean`, `two_stream` and `r3d_18` against `frame_mean`.

Same clips (the embedded generator's, written to a temporary folder), same process, the
encoders timed in alternating rounds (best round kept), decoding in the main process so the
figure is the whole cost of a clip. Also splits each encoder's cost into preprocessing
(decoding, and optical flow for two_stream) and the network.

    .venv/bin/python benchmarks/bench_video.py [--n 48] [--frames 4] [--size 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import mmlab.features as F
from mmlab.data import synthetic

ENCODERS = ("frame_mean", "two_stream", "r3d_18")


def clips(folder: Path, n: int) -> list[str]:
    synthetic.generate(folder, n=n, seed=0, image_size=64, audio=False, workers=1)
    return sorted(str(p) for p in folder.rglob("*.mp4"))[:n]


def seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def preprocess_all(extractor, items) -> list:
    return [extractor.preprocess(p) for p in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="clips")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        items = clips(Path(tmp) / "clips", args.n)
        encoders = {
            name: F.create(
                "video", name, num_frames=args.frames, image_size=args.size, device="cpu"
            )
            for name in ENCODERS
        }
        for ex in encoders.values():
            ex.extract(items[:2], num_workers=0)  # warm-up
        total = {name: float("inf") for name in ENCODERS}
        prep = dict(total)
        for _ in range(args.rounds):
            for name, ex in encoders.items():
                total[name] = min(total[name], seconds(ex.extract, items, num_workers=0))
                prep[name] = min(prep[name], seconds(preprocess_all, ex, items))

    print(
        f"{len(items)} clips, {args.frames} frames of {args.size} px, {args.threads} thread(s),"
        f" best of {args.rounds} rounds"
    )
    print("| encoder | ms/clip | x frame_mean | of which preprocessing (ms/clip) |")
    print("|---|---:|---:|---:|")
    base = total["frame_mean"]
    for name in ENCODERS:
        ms, pre = 1000 * total[name] / len(items), 1000 * prep[name] / len(items)
        print(f"| {name} | {ms:.1f} | {total[name] / base:.2f}x | {pre:.1f} |")


if __name__ == "__main__":
    main()
