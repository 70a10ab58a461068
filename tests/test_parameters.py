"""Parameters are listed once, in each notebook's parameters cell: the runner logs them from
there (under the batch's values), and `tracking.start` reads them from the kernel."""

from __future__ import annotations

import importlib
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mmlab import tracking
from mmlab.core import parameters_cell

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def notebook(tmp_path: Path, source: str, name: str = "nb") -> Path:
    nb = new_notebook()
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [new_code_cell("print(1)"), cell]
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_names_in_order_and_literal_defaults(tmp_path):
    path = notebook(
        tmp_path,
        "%matplotlib inline\nb = 2\na: float = 1e-3\nc = {'x': [1, 2]}\n"
        "d = os.cpu_count()\ne, f = 1, 2",
    )
    assert parameters_cell.names(path) == ["b", "a", "c", "d", "e", "f"]
    assert parameters_cell.defaults(path) == {"b": 2, "a": 0.001, "c": {"x": [1, 2]}}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_of_the_notebooks_is_a_literal_the_runner_can_log(path):
    """A computed default would be logged by the kernel only, after the notebook started."""
    assert list(parameters_cell.defaults(path)) == parameters_cell.names(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_do_not_list_their_parameters_twice(path):
    nb = nbformat.read(path, as_version=4)
    (start,) = [c.source for c in nb.cells if "tracking.start(" in c.source]
    assert "params=" not in start


def test_an_empty_dict_parameter_is_still_logged():
    assert tracking.flatten({"options": {}, "nested": {"a": {}}}) == {
        "options": "{}",
        "nested.a": "{}",
    }


def test_kernel_parameters_read_the_cell_and_take_the_kernel_values(tmp_path, monkeypatch):
    path = notebook(tmp_path, "lr = 0.1\nlayers = [1, 2]", name="train")
    monkeypatch.setenv("MMLAB_NOTEBOOK_PATH", str(path))
    namespace = {"lr": 0.5, "layers": [1, 2], "other": 3}  # lr as papermill injected it
    assert tracking.kernel_parameters("train", namespace) == {"lr": 0.5, "layers": [1, 2]}
    monkeypatch.delenv("MMLAB_NOTEBOOK_PATH")
    monkeypatch.chdir(tmp_path)  # JupyterLab and --cwd: the kernel runs beside the notebook
    assert tracking.kernel_parameters("train", namespace)["lr"] == 0.5
    assert tracking.kernel_parameters("missing", namespace) == {}  # a script: no notebook
    kernel = {**namespace, "get_ipython": print}
    with pytest.raises(FileNotFoundError, match="cannot find missing.ipynb.*params="):
        tracking.kernel_parameters("missing", kernel)
    # JupyterLab on a renamed copy: the session's file, when the kernel has its parameters
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    assert tracking.kernel_parameters("missing", kernel)["lr"] == 0.5
    with pytest.raises(FileNotFoundError):  # not this kernel's notebook: `layers` is missing
        tracking.kernel_parameters("missing", {"get_ipython": print, "lr": 1})


def test_start_reads_the_parameters_by_itself(tmp_path, monkeypatch):
    path = notebook(tmp_path, "lr = 0.1\nopts = {'depth': 2}", name="by_itself")
    monkeypatch.setenv("MMLAB_NOTEBOOK_PATH", str(path))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    lr, opts = 0.25, {"depth": 2}  # noqa: F841 -- read from this frame by start
    globals().update(lr=lr, opts=opts)
    try:
        run = tracking.start(notebook="by_itself")
        params = tracking.client().get_run(run.info.run_id).data.params
        assert params == {"lr": "0.25", "opts.depth": "2"}
    finally:
        tracking.finish()
        for name in ("lr", "opts"):
            globals().pop(name, None)


def test_argument_parser_takes_each_option_of_the_notebook_default_and_its_type(tmp_path, capsys):
    path = notebook(
        tmp_path, "n = 2\nx = 0.5\nname = 'a'\nflag = False\nopts = {}\nitems = [1]\nmaybe = None"
    )
    names = ["n", "x", "name", "flag", "opts", "items", "maybe"]
    parser = parameters_cell.argument_parser(path, names, prog="script")
    defaults = dict(n=2, x=0.5, name="a", flag=False, opts={}, items=[1], maybe=None)
    assert vars(parser.parse_args([])) == defaults
    args = parser.parse_args(
        ["--n", "3", "--x", "1e-3", "--name", "b", "--opts", '{"depth": 2}', "--items", "[]"]
    )
    assert (args.n, args.x, args.name, args.opts, args.items) == (3, 1e-3, "b", {"depth": 2}, [])
    for text, value in [("true", True), ("YES", True), ("1", True), ("no", False), ("0", False)]:
        assert parser.parse_args(["--flag", text]).flag is value
    assert parser.parse_args(["--maybe", "4"]).maybe == 4  # a None default reads JSON
    assert parser.parse_args(["--maybe", "text"]).maybe == "text"  # else the text itself
    for bad in (["--opts", "{depth: 2}"], ["--flag", "maybe"], ["--n", "1.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert f"argument {bad[0]}:" in capsys.readouterr().err  # names the option
    with pytest.raises(ValueError, match=r"nb\.ipynb: no parameter 'rates'"):
        parameters_cell.argument_parser(path, ["n", "rates"], prog="script")


@pytest.mark.parametrize("module", ["mmlab.fusion.ddp", "mmlab.captioning.ddp"])
def test_the_torchrun_scripts_default_to_their_notebooks_parameters(module):
    ddp = importlib.import_module(module)
    found = parameters_cell.defaults(REPO / "notebooks" / f"{ddp.NOTEBOOK}.ipynb")
    args = vars(ddp.parse([]))
    assert {name: args[name] for name in ddp.NAMES} == {name: found[name] for name in ddp.NAMES}
    args = ddp.parse(["--epochs", "2", "--device", "cpu", "--batch-size", "8", "--seed", "1"])
    assert (args.epochs, args.device, args.batch_size, args.seed) == (2, "cpu", 8, 1)
