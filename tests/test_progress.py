"""Progress records (what the runner shows) and the output claims that keep runners apart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mmlab.batch import view as batch_view
from mmlab.core import progress, workspace


def test_epoch_bar_writes_records_only_under_the_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    with progress.EpochBar(2, "quiet") as bar:
        bar.update({"loss": 1.0})
    assert not list(tmp_path.iterdir())

    monkeypatch.setenv(progress.ENV, str(tmp_path))
    progress.report("cell", cell=3, cells=9)
    with progress.EpochBar(5, "gated seed 1") as bar:
        bar.update({"loss": 0.9, "val_accuracy": 0.61})
        bar.update({"loss": 0.5, "val_accuracy": 0.734})
    snapshot = progress.read(tmp_path)
    assert snapshot.describe() == "cell 3/9, gated seed 1 epoch 2/5 loss 0.5 val_accuracy 0.734"
    (tmp_path / "epoch-1.json").write_text('{"kind": "ep')  # half written: skipped
    assert progress.read(tmp_path).epoch["epoch"] == 2


def test_plain_view_prints_every_interval(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV, str(tmp_path))
    progress.report("cell", cell=2, cells=7)
    lines: list[str] = []
    view = batch_view.PlainView(lines.append, every=0.0)
    view.tick([batch_view.Running("fusion", time.perf_counter() - 75, tmp_path)])
    assert lines == ["  ... fusion 1m15s: cell 2/7"]
    view = batch_view.PlainView(lines.append, every=3600)
    view.tick([batch_view.Running("fusion", time.perf_counter(), tmp_path)])
    assert len(lines) == 1  # not yet


def test_a_claim_excludes_others_and_dies_with_its_process(tmp_path):
    output = tmp_path / "stage" / "nb.ipynb"
    mine = workspace.claim(output, "pid 1, batch a")
    assert mine is not None
    assert workspace.claim(output, "pid 2, batch b") is None
    assert workspace.claimant(output) == "pid 1, batch a"
    mine.release()
    again = workspace.claim(output, "pid 3, batch c")
    assert again is not None
    again.release()

    # a runner killed while it holds a claim leaves no stale one behind
    code = (
        "import sys, time; from mmlab.core import workspace; "
        f"held = workspace.claim({str(output)!r}, 'doomed'); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert holder.stdout.readline().strip() == "held"
    assert workspace.claim(output, "me") is None
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    taken = workspace.claim(output, "me")
    assert taken is not None
    taken.release()
