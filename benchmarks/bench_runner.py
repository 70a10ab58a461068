"""The runner against a plain loop of the papermill CLI, on 8 small notebook executions.

Prints the wall-time ratio (papermill loop / runner --jobs 2) and the runner's overhead per
notebook: the time an execution took beyond the kernel's own cell execution (kernel start,
parameter injection, HTML rendering, MLflow run creation and artifacts). Both sides run the
same notebook with the same work, in a throwaway workspace and MLflow store.

    .venv/bin/python benchmarks/bench_runner.py [--n 8] [--jobs 2] [--work 3000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "tests" / "notebooks" / "ok.ipynb"


def kernel_seconds(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    return sum(c.metadata.get("papermill", {}).get("duration") or 0.0 for c in nb.cells)


def papermill_loop(n: int, work: int, out: Path) -> tuple[float, float]:
    """(wall seconds, kernel seconds) of n sequential `papermill` CLI runs."""
    papermill = Path(sys.executable).parent / "papermill"
    start = time.perf_counter()
    for x in range(n):
        target = out / f"pm_{x}.ipynb"
        cmd = [
            str(papermill),
            str(NOTEBOOK),
            str(target),
            "-p",
            "x",
            str(x),
            "-p",
            "work",
            str(work),
            "--cwd",  # beside the notebook, as the runner runs kernels (tracking.start reads it)
            str(NOTEBOOK.parent),
        ]
        subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return wall, sum(kernel_seconds(out / f"pm_{x}.ipynb") for x in range(n))


def runner_batch(n: int, work: int, jobs: int, folder: Path):
    from mmlab.batch import launch

    batch = {
        "name": "bench",
        "stages": {
            "bench": {
                "notebook": str(NOTEBOOK),
                "parameters": {"work": work},
                "grid": {"x": list(range(n))},
            }
        },
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(batch))
    start = time.perf_counter()
    report = launch.run(path, jobs=jobs, out=lambda line: None)
    wall = time.perf_counter() - start
    assert report.ok, [r.error for r in report.results]
    return wall, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=int, default=3_000_000, help="busy-loop size per kernel")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["MMLAB_HOME"] = str(home)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
        os.environ.pop("MLFLOW_RUN_ID", None)
        from mmlab import tracking

        tracking.ensure_store()  # both sides start from an existing store

        run_wall, report = runner_batch(args.n, args.work, args.jobs, home)
        run_kernel = sum(r.kernel_seconds for r in report.results)
        per_job = [r.seconds - r.kernel_seconds for r in report.results]
        pm_wall, pm_kernel = papermill_loop(args.n, args.work, home)

    n = args.n
    print(f"{n} executions of {NOTEBOOK.name} (work={args.work})")
    print(
        f"papermill CLI loop : {pm_wall:7.1f}s wall, {pm_kernel:6.1f}s in cells, "
        f"{(pm_wall - pm_kernel) / n:5.2f}s/notebook beyond cells"
    )
    print(
        f"mmlab run --jobs {args.jobs}: {run_wall:7.1f}s wall, {run_kernel:6.1f}s in cells, "
        f"{sum(per_job) / n:5.2f}s/notebook beyond cells"
    )
    print(f"ratio papermill loop / runner: {pm_wall / run_wall:.2f}x")
    print(
        f"runner overhead per notebook (job time beyond the kernel's cells): {sum(per_job) / n:.2f}s"
    )
    print(
        f"runner overhead per notebook vs papermill CLI: {(sum(per_job) - (pm_wall - pm_kernel)) / n:+.2f}s"
    )


if __name__ == "__main__":
    main()
