"""The `mmlab` command: clear errors (exit 2, no traceback), exit codes, subcommand wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmlab import cli, tracking

HERE = Path(__file__).resolve().parent
BATCHES = HERE / "batches"


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ("bad_unknown_key.yaml", "stage 'one': key 'paramters': unknown key"),
        ("bad_missing_notebook.yaml", "key 'notebook'"),
        ("bad_undefined_param.yaml", "does not define 'learning_rate'"),
        ("bad_cycle.yaml", "forms a cycle"),
    ],
)
def test_bad_batch_file_is_a_clear_error(capsys, batch, expected):
    assert cli.main(["run", str(BATCHES / batch)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmlab run: error: ") and str(BATCHES / batch) in err
    assert expected in err and "Traceback" not in err


def test_dry_run_refuses_a_value_unlike_the_default_and_an_unknown_name(capsys):
    path = BATCHES / "bad_values.yaml"
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: stage 'fusion': key 'parameters.seeds': 'abc' is a text" in err
    assert f"{path}: stage 'fusion': key 'parameters.methods': unknown fusion method" in err
    assert "Traceback" not in err


def test_bad_options_are_clear_errors(capsys):
    assert cli.main(["run", str(BATCHES / "demo.yaml"), "--jobs", "0"]) == 2
    assert cli.main(["run", str(BATCHES / "demo.yaml"), "--only", "nope", "--dry-run"]) == 2
    assert cli.main(["run", str(BATCHES / "demo.yaml"), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert "--jobs 0" in err and "--only nope: unknown stage" in err and "--set nope" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_dry_run_prints_the_plan(capsys):
    argv = ["run", str(BATCHES / "demo.yaml"), "--dry-run", "--set", "single.x=11"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "grid[x=1]" in out and "grid[x=2]" in out and "x=11" in out
    assert "runs/demo/grid/x=1.ipynb" in out


def test_caption_checks_images_before_loading_the_model(tmp_path, capsys):
    missing = tmp_path / "missing.png"
    assert cli.main(["caption", str(missing), "--model", "no-such-model"]) == 2
    assert f"{missing}: no such image file" in capsys.readouterr().err
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert cli.main(["caption", str(text), "--model", "no-such-model"]) == 2
    assert f"{text}: not a readable image" in capsys.readouterr().err
    assert cli.main(["caption", str(text), "--model", "m", "--beam", "0"]) == 2


def test_ui_uses_the_workspace_store_and_artifact_root():
    command = cli.ui_command("127.0.0.1", 5123)
    assert command[1:4] == ["-m", "mlflow", "ui"]
    store = command[command.index("--backend-store-uri") + 1]
    assert store == tracking.tracking_uri()
    root = command[command.index("--default-artifact-root") + 1]
    assert root == tracking.default_artifact_root()
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "5123"]


def test_data_synth_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        cli.main(
            ["data", "synth", "--out", str(out), "--n", "6", "--seed", "1", "--image-size", "32"]
        )
        == 0
    )
    assert (out / "train" / "metadata.jsonl").is_file()
    assert cli.main(["data", "synth", "--out", str(tmp_path / "x"), "--n", "0"]) == 2
    assert "n must be at least 1" in capsys.readouterr().err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "mmlab", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for name in cli.COMMANDS:
        assert name in done.stdout
