"""Batch files: validation errors name file, stage and key; grids and layers expand correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmlab.batch import config
from mmlab.batch.config import BatchError

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE / "notebooks"
BATCHES = HERE / "batches"


def write(tmp_path: Path, batch: dict, name: str = "batch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(batch, sort_keys=False))
    return path


def ok(**stage) -> dict:
    return {"notebook": str(NOTEBOOKS / "ok.ipynb"), **stage}


def test_notebook_parameters_reads_the_tagged_cell():
    assert config.notebook_parameters(NOTEBOOKS / "ok.ipynb") == {"x", "label", "work"}
    assert config.notebook_parameters(NOTEBOOKS / "consume.ipynb") == {"upstream"}


def test_parameters_cell_forms(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    cell = new_code_cell("%matplotlib inline\na, (b, c) = 1, (2, 3)\nd: int = 4\nprint(e := 5)")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "p.ipynb")
    assert config.notebook_parameters(tmp_path / "p.ipynb") == {"a", "b", "c", "d"}
    cell.source = "x = = 1"
    nbformat.write(nb, tmp_path / "bad.ipynb")
    with pytest.raises(BatchError, match="bad.ipynb: parameters cell is not valid Python"):
        config.notebook_parameters(tmp_path / "bad.ipynb")


def test_demo_batch_expands_grid_and_finds_notebooks_upwards():
    batch = config.load(BATCHES / "demo.yaml")
    assert batch.name == "demo"
    assert list(batch.stages) == ["grid", "single", "consume", "fail", "after_fail", "crash"]
    grid = batch.stages["grid"]
    assert [e.label for e in grid] == ["grid[x=1]", "grid[x=2]"]
    assert [e.parameters for e in grid] == [{"label": "base", "x": 1}, {"label": "base", "x": 2}]
    assert grid[0].notebook == NOTEBOOKS / "ok.ipynb"
    # `label` is a default, but consume.ipynb has no such knob: it is not given one
    assert batch.stages["consume"][0].parameters == {"upstream": "${single.run_id}"}
    assert batch.varying("grid") == ["x"] and batch.varying("single") == []


def test_layers_and_overrides(tmp_path):
    path = write(
        tmp_path,
        {
            "name": "layers",
            "defaults": {"x": 1, "label": "d"},
            "stages": {
                "a": ok(parameters={"label": "stage"}, grid={"x": [2, 3], "work": [0, 10]}),
                "b": ok(),
            },
        },
    )
    batch = config.load(path)
    assert [e.name for e in batch.stages["a"]] == [
        "x=2,work=0",
        "x=2,work=10",
        "x=3,work=0",
        "x=3,work=10",
    ]
    assert batch.stages["b"][0].parameters == {"x": 1, "label": "d"}
    # `--set key=v` reaches every stage defining key and pins a grid axis; `stage.key` one stage
    batch = config.load(path, ["x=7", "b.label=only-b"])
    assert [e.parameters for e in batch.stages["a"]] == [
        {"x": 7, "label": "stage", "work": 0},
        {"x": 7, "label": "stage", "work": 10},
    ]
    assert batch.stages["b"][0].parameters == {"x": 7, "label": "only-b"}


def test_references_resolve_and_hashes_are_stable():
    batch = config.load(BATCHES / "demo.yaml")
    (consume,) = batch.stages["consume"]
    assert consume.references() == {"single"}
    assert consume.resolve({"single": "abc123"}) == {"upstream": "abc123"}
    assert config.parameter_hash({"a": 1, "b": [1, 2]}) == config.parameter_hash(
        {"b": [1, 2], "a": 1}
    )
    assert config.parameter_hash({"a": 1}) != config.parameter_hash({"a": 1.5})


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (
            "bad_unknown_key.yaml",
            r"bad_unknown_key.yaml: stage 'one': key 'paramters': unknown key",
        ),
        (
            "bad_missing_notebook.yaml",
            r"stage 'one': key 'notebook': 'notebooks/does_not_exist.ipynb' not found",
        ),
        (
            "bad_undefined_param.yaml",
            r"stage 'one': key 'parameters.learning_rate': notebooks/ok.ipynb does not define 'learning_rate'",
        ),
        ("bad_cycle.yaml", r"stage 'a': key 'needs' forms a cycle: a -> c -> b -> a"),
    ],
)
def test_bad_batch_files_name_file_stage_and_key(filename, expected):
    with pytest.raises(BatchError) as info:
        config.load(BATCHES / filename)
    assert expected in str(info.value)
    assert str(BATCHES / filename) in str(info.value) or filename in str(info.value)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"stages": {"a": ok()}, "extra": 1}, "key 'extra': unknown key"),
        ({"stages": {}}, "at least one stage"),
        ({"stages": {"a": ok(grid={"work": [1]})}, "defaults": {"nope": 1}}, "key 'defaults.nope'"),
        ({"stages": {"a": ok(grid={"nope": [1]})}}, "key 'grid.nope'"),
        ({"stages": {"a": ok(grid={"x": []})}}, "key 'grid.x': empty list"),
        ({"stages": {"a": ok(needs=["zz"])}}, "key 'needs': unknown stage 'zz'"),
        (
            {"stages": {"a": ok(), "b": ok(parameters={"label": "${a.run_id}"})}},
            "not in its 'needs'",
        ),
        (
            {
                "stages": {
                    "a": ok(grid={"x": [1, 2]}),
                    "b": ok(needs=["a"], parameters={"label": "${a.run_id}"}),
                }
            },
            "ambiguous: stage 'a' has 2 executions",
        ),
        ({"stages": {"a": ok(parameters="x=1")}}, "stage 'a': key 'parameters'"),
        ({"stages": {"a b": ok()}}, "stage 'a b': use letters"),
        ({"stages": {"a": ok(timeout=0)}}, "stage 'a': key 'timeout'"),
    ],
)
def test_invalid_batches(tmp_path, batch, expected):
    path = write(tmp_path, batch)
    with pytest.raises(BatchError, match="batch.yaml") as info:
        config.load(path)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("novalue", "expected key=value"),
        ("nope=1", "defines 'nope'"),
        ("zz.x=1", "unknown stage 'zz'"),
    ],
)
def test_bad_overrides(tmp_path, override, expected):
    path = write(tmp_path, {"stages": {"a": ok()}})
    with pytest.raises(BatchError, match=expected):
        config.load(path, [override])


def test_not_a_batch(tmp_path):
    with pytest.raises(BatchError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(BatchError, match="expected a mapping"):
        config.load(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("stages: [\n")
    with pytest.raises(BatchError, match="not valid YAML"):
        config.load(tmp_path / "broken.yaml")


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        {
            "defaults": {"nope": 1},
            "stages": {
                "a": ok(parameters={"learning_rate": 1}, grid={"x": []}),
                "b": ok(paramters={"x": 1}),
                "c": {"notebook": "missing.ipynb", "needs": ["zz"]},
            },
        },
    )
    with pytest.raises(BatchError) as info:
        config.load(path, ["x"])
    message = str(info.value)
    for expected in (
        "--set 'x': expected key=value",
        "stage 'a': key 'parameters.learning_rate'",
        "stage 'a': key 'grid.x': empty list",
        "stage 'b': key 'paramters': unknown key",
        "stage 'c': key 'notebook': 'missing.ipynb' not found",
        "stage 'c': key 'needs': unknown stage 'zz'",
    ):
        assert expected in message, (expected, message)
    assert len(message.splitlines()) == 6


@pytest.mark.parametrize("path", sorted((HERE.parent / "params").glob("*.yaml")), ids=str)
def test_every_shipped_batch_file_is_valid(path):
    """Every parameter a shipped batch sets exists in its notebook's parameters cell."""
    batch = config.load(path)
    assert batch.stages
