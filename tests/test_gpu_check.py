"""benchmarks/gpu_check.sh on the CPU at small sizes: the script a lent GPU runs works before."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    results = tmp_path_factory.mktemp("gpu-check") / "RESULTS.md"
    results.write_text("# Benchmark results\n\nEarlier figures.\n")
    env = {**os.environ, "MMLAB_RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    # --no-setup: this test runs inside the venv that `make setup` built (test_setup.py checks it)
    done = subprocess.run(
        [str(SCRIPT), "--device", "cpu", "--small", "--no-setup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    return done, results


def test_the_cpu_check_passes_and_adds_its_section(checked):
    done, results = checked
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nEarlier figures.\n")  # kept, added to
    assert "\n## GPU check on " in text and "--device cpu --small" in text
    for step in (
        "smoke batch (plan only)",
        "bench_captioning.py, training",
        "bench_features.py",
        "bench_fusion.py",
    ):
        assert f"### {step}\n" in text, step
    assert "failed (exit" not in text
    assert "| small | " in text and "ours, AMP" in text  # the captioning table, with AMP
    assert "images/s" in text and "| grid_cross_attention |" in text
    assert not (ROOT / "benchmarks" / "RESULTS.md.tmp").exists()


def test_a_bad_option_is_named():
    done = subprocess.run(
        [str(SCRIPT), "--device", "tpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--device must be cpu or cuda" in done.stderr
