"""Feature extraction at scale: images/s and peak resident memory, 10k against 100k scenes.

For each size the embedded dataset is generated (images only: audio and video play no part in
image features), loaded once in a process of its own (the `datasets` Arrow cache and the
content fingerprint), then, in a fresh process, loaded again and every split's image features
extracted into the feature cache: streamed batch by batch from the extractor's DataLoader to
disk. That process reports images/s and its peak resident set (`ru_maxrss`), its DataLoader
workers' peak (`RUSAGE_CHILDREN`) apart. Bar: peak RSS at the largest size at most 1.5x that
at the smallest, memory that does not grow with the data set.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 10000 100000] [--image-size 64]
        [--encoder efficientnet_lite0] [--device cpu] [--workers 1] [--work DIR]

`--work DIR` keeps the generated data and the cache there (reused by a second run: delete
`DIR/cache/features` to time extraction again); without it everything goes to a temporary
folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAR = 1.5


def child_generate(size: int, image_size: int) -> dict:
    from mmlab.data import default_dataset

    started = time.perf_counter()
    path = default_dataset(
        n=size, image_size=image_size, audio=False, video=False, workers=os.cpu_count() or 1
    )
    return {"path": str(path), "seconds": time.perf_counter() - started}


def child_load(path: str) -> dict:
    from mmlab.data import load_dataset

    started = time.perf_counter()
    ds = load_dataset(path)
    return {"rows": sum(len(s) for s in ds.values()), "seconds": time.perf_counter() - started}


def child_extract(path: str, encoder: str, image_size: int, device: str, workers: int) -> dict:
    import resource

    import torch

    import mmlab.features as F
    from mmlab.data import load_dataset
    from mmlab.features import cache

    ds = load_dataset(path)
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extractor = F.create("image", encoder, image_size=image_size, device=device)
    started = time.perf_counter()
    rows, shape = 0, None
    for split in ds:
        values = cache.features(ds, split, extractor, num_workers=workers)
        rows, shape = rows + len(values), list(values.shape[1:])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "shape": shape,
        "seconds": seconds,
        "images_per_s": rows / seconds,
        "loaded_mib": loaded_kib / 1024,  # Linux: ru_maxrss in KiB
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "cache_mib": sum(
            p.stat().st_size for p in (cache.workspace.cache_dir() / "features").rglob("*")
        )
        / 2**20,
    }


def in_child(env: dict, function: str, *args) -> dict:
    """Run `function(*args)` of this file in a fresh process; its JSON result."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_scale as b; "
        f"print('RESULT', json.dumps(b.{function}(*json.loads(sys.argv[2]))))"
    )
    here = str(Path(__file__).resolve().parent)
    done = subprocess.run(
        [sys.executable, "-c", code, here, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{function}{args} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--image-size", type=int, default=64, help="scenes' and encoder's side")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decoding workers")
    parser.add_argument("--work", type=Path, help="keep data and cache here (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mmlab-bench-scale-"))
    env = {
        **os.environ,
        "MMLAB_DATA_DIR": str(work / "data"),
        "MMLAB_CACHE_DIR": str(work / "cache"),
        "PYTHONWARNINGS": "ignore",
    }
    rows = []
    try:
        for size in args.sizes:
            made = in_child(env, "child_generate", size, args.image_size)
            loaded = in_child(env, "child_load", made["path"])
            shutil.rmtree(work / "cache" / "features", ignore_errors=True)  # extract anew
            out = in_child(
                env,
                "child_extract",
                made["path"],
                args.encoder,
                args.image_size,
                args.device,
                args.workers,
            )
            rows.append((size, made, loaded, out))
            print(
                f"{size} scenes: generated in {made['seconds']:.0f} s, first load "
                f"{loaded['seconds']:.0f} s, extraction {out['images_per_s']:.0f} images/s, "
                f"peak RSS {out['peak_mib']:.0f} MiB",
                flush=True,
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    first = rows[0][3]["peak_mib"]
    print(
        f"\n{args.encoder} at {args.image_size} px, {rows[0][3]['shape']} features per image, "
        f"device {args.device}, {args.workers} DataLoader worker(s), every split:\n"
    )
    print(
        "| scenes | images/s | peak RSS (MiB) | x smallest | after loading (MiB) "
        "| workers' peak (MiB) | cache (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, _, _, out in rows:
        print(
            f"| {size:,} | {out['images_per_s']:.0f} | {out['peak_mib']:.0f} "
            f"| {out['peak_mib'] / first:.2f}x | {out['loaded_mib']:.0f} "
            f"| {out['workers_peak_mib']:.0f} | {out['cache_mib']:.0f} |"
        )
    ratio = rows[-1][3]["peak_mib"] / first
    verdict = "met" if ratio <= BAR else "NOT met"
    print(f"\nPeak RSS ratio, largest / smallest: {ratio:.2f}x (bar: <= {BAR}x): {verdict}")


if __name__ == "__main__":
    main()
