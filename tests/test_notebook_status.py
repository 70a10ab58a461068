"""A cell that raises marks the run FAILED, in a real IPython shell (the kernel's own machinery;
plain papermill end to end is in test_serving.py)."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from mmlab import tracking
from mmlab.tracking import notebook_status


@pytest.fixture
def shell():
    shell = InteractiveShell.instance()
    yield shell
    InteractiveShell.clear_instance()


def test_a_raising_cell_fails_the_run_and_a_restart_keeps_it_failed(shell):
    assert notebook_status.watch_cells()
    run = tracking.start(notebook="status_demo", params={"knob": 1})
    shell.run_cell("x = 1 + 1")
    client = tracking.client()
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    shell.run_cell("raise ValueError('context line\\nboom at the end')")
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[notebook_status.ERROR_TAG] == "ValueError: boom at the end"
    # editing a knob and re-running start ends the broken run FAILED, not FINISHED
    fresh = tracking.start(notebook="status_demo", params={"knob": 2})
    ended = client.get_run(run.info.run_id).info
    assert ended.status == "FAILED" and ended.end_time is not None
    shell.run_cell("y = 2")
    tracking.finish()
    assert client.get_run(fresh.info.run_id).info.status == "FINISHED"


def test_outside_ipython_nothing_is_installed(monkeypatch):
    monkeypatch.delitem(__import__("sys").modules, "IPython", raising=False)
    assert notebook_status.watch_cells() is False
