"""Run the benchmarks and rewrite `benchmarks/RESULTS.md` with their output, the date and the
machine (`make bench`). Each benchmark's output also goes to the terminal as it runs.

    .venv/bin/python benchmarks/results.py [bench_captioning bench_fusion ...]
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from mmlab.core.workspace import atomic_path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """CPU model, cores, OS, Python and PyTorch versions, and the GPU if there is one."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def run(script: Path) -> str:
    """The script's output (streamed to the terminal too); a failing script stops the run."""
    lines = []
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append(line)
    if process.returncode:
        raise SystemExit(f"{script.name} failed (exit {process.returncode}); RESULTS.md unchanged")
    return "".join(line for line in lines if "cpp_extension.py" not in line).strip()


def main(names: list[str]) -> None:
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        known = {s.stem: s for s in scripts}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown benchmarks {unknown}; valid: {', '.join(known)}")
        scripts = [known[n] for n in names]
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        sections.append(f"## {script.name}\n\n{run(script)}\n")
    text = (
        f"# Benchmark results\n\nWritten by `make bench` ({started}).\n\n"
        f"Machine: {machine()}.\n\n" + "\n".join(sections)
    )
    with atomic_path(HERE / "RESULTS.md") as path:
        path.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
