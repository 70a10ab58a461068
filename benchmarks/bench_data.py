"""Data layer speed: generating the embedded dataset with a pool of 2 workers against one
process, and reloading a dataset (file checks cached) against the first load.

    python benchmarks/bench_data.py [N]      # N samples (default 300), audio and video on
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(n: int = 300) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MMLAB_HOME"] = tmp  # caches of this run stay in the temporary folder
        (Path(tmp) / "notebooks").mkdir()
        from mmlab.data import fingerprint, load_dataset, synthetic

        cpu = time.process_time()
        serial, _ = timed(lambda: synthetic.generate(Path(tmp) / "a", n=n, workers=1))
        cpu = time.process_time() - cpu
        print(
            f"CPU time: {cpu / n * 1000:.0f} ms per sample, {cpu / n * 3000:.0f} CPU-s per 3000 "
            f"(~{cpu / n * 1500:.0f} s wall on 2 idle cores)"
        )
        pooled, out = timed(lambda: synthetic.generate(Path(tmp) / "b", n=n, workers=2))
        print(
            f"generate {n} samples (128 px, audio, video): 1 process {serial:.1f} s, "
            f"2 workers {pooled:.1f} s -> speed-up x{serial / pooled:.2f}; "
            f"{pooled / n * 3000:.0f} s per 3000 samples with 2 workers"
        )
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"size on disk: {size / n * 3000 / 2**20:.0f} MiB per 3000 samples")

        cold, ds = timed(lambda: load_dataset(out))
        warm, again = timed(lambda: load_dataset(out))
        assert fingerprint(ds) == fingerprint(again)
        print(
            f"load: first {cold:.2f} s (checks and hashes every file), again {warm:.2f} s "
            f"-> x{cold / warm:.1f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
