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


# --------------------------------------------------------------------------- search blocks


def search(**block) -> dict:
    """A search block over ok.ipynb's `x`, with `block`'s keys on top."""
    return {"metric": "value", "parameters": {"x": {"type": "int", "low": 1, "high": 4}}, **block}


def test_a_search_block_is_parsed_with_its_defaults(tmp_path):
    space = {
        "x": {"type": "float", "low": "1e-4", "high": 1.0, "log": True},
        "work": {"type": "int", "low": 0, "high": 10, "step": 2},
        "label": {"type": "categorical", "choices": ["a", "b"]},
    }
    stages = {
        "plain": ok(),
        "tuned": ok(search={"metric": "value", "parameters": space, "pruner": "none"}),
    }
    batch = config.load(write(tmp_path, {"stages": stages}))
    found = batch.searches["tuned"]
    assert found.direction == "maximize" and found.trials == 12
    assert (found.sampler.name, found.sampler.seed) == ("tpe", 0)
    assert found.parameters["x"].low == pytest.approx(1e-4)  # YAML's 1e-4 is a string
    assert found.parameters["work"].distribution().step == 2
    assert found.parameters["label"].distribution().choices == ("a", "b")
    # the search asks for its own executions: the batch's list holds only the plain stage's
    assert [e.stage for e in batch.executions] == ["plain"]


def test_every_problem_of_search_blocks_is_reported_at_once(tmp_path):
    stages = {
        "logzero": ok(
            search=search(parameters={"x": {"type": "float", "low": 0, "high": 1, "log": True}})
        ),
        "nochoices": ok(search=search(parameters={"x": {"type": "categorical"}})),
        "halfint": ok(search=search(parameters={"x": {"type": "int", "low": 1.5, "high": 3}})),
        "pruner": ok(search=search(pruner={"name": "median"})),
        "unknown": ok(search=search(budget=3)),
        "lacks": ok(search=search(parameters={"lr": {"type": "float", "low": 0.1, "high": 1}})),
        "grid": ok(grid={"work": [1, 2]}, search=search()),
        "twice": ok(parameters={"x": 2}, search=search()),
        "needed": ok(search=search()),
        "needs": ok(needs=["needed"]),
    }
    path = write(tmp_path, {"stages": stages})
    with pytest.raises(BatchError) as info:
        config.load(path)
    message = str(info.value)
    for expected in (
        "stage 'logzero': key 'search.parameters.x': log: true needs 'low' above 0, got 0",
        "stage 'nochoices': key 'search.parameters.x': a categorical parameter needs a non-empty",
        "stage 'halfint': key 'search.parameters.x': an int parameter needs a whole 'low', got 1.5",
        "stage 'pruner': key 'search.pruner': the pruner needs 'metric'",
        "stage 'unknown': key 'search.budget': unknown key",
        "stage 'lacks': key 'search.parameters.lr': ",
        "does not define 'lr' in its parameters cell",
        "stage 'grid': key 'grid': a stage with 'search' has no grid",
        "stage 'twice': key 'search.parameters.x': also set in 'parameters'",
        "stage 'needs': key 'needs': 'needed' is a search, which no stage can need",
    ):
        assert expected in message, (expected, message)
    assert all(line.startswith(f"{path}: stage '") for line in message.splitlines())


def test_a_search_space_unlike_the_default_is_refused(tmp_path):
    space = {"label": {"type": "int", "low": 1, "high": 3}}
    path = write(tmp_path, {"stages": {"a": ok(search=search(parameters=space))}})
    with pytest.raises(
        BatchError, match=r"stage 'a': key 'search.parameters.label': 1 is a number"
    ):
        config.load(path)


# --------------------------------------------------------------------------- values and names


def test_values_unlike_the_defaults_are_refused_everywhere_they_come_from(tmp_path):
    path = write(
        tmp_path,
        {
            "defaults": {"label": 3},
            "stages": {"a": ok(parameters={"x": "abc"}, grid={"work": [1, "many"]})},
        },
    )
    with pytest.raises(BatchError) as info:
        config.load(path, ["a.x=[1, oops]"])
    message = str(info.value)
    for expected in (
        f"{path}: stage 'a': key 'defaults.label': 3 is a number, but the notebook's default "
        "'a' is a text",
        "stage 'a': key 'parameters.x': 'abc' is a text, but the notebook's default 1 is a number",
        "stage 'a': key 'grid.work': 'many' is a text",
        "stage 'a': --set x: [1, 'oops'] is a list, but the notebook's default 1 is a number",
    ):
        assert expected in message, (expected, message)


def test_values_of_a_related_kind_are_taken(tmp_path):
    # numbers mix; a list of what the default is one of (seeds: 3 or [0, 4]); None for anything
    stages = {"a": ok(parameters={"x": 2.5, "work": [1, 2], "label": None})}
    config.load(write(tmp_path, {"stages": stages}))


def test_a_text_the_parameter_comment_names_is_taken(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cell = new_code_cell('stages = 0  # k: the top k stages; "all": every one\nsize = 8')
    cell.metadata["tags"] = ["parameters"]
    nbformat.write(new_notebook(cells=[cell]), tmp_path / "p.ipynb")
    notebook = str(tmp_path / "p.ipynb")
    config.load(
        write(tmp_path, {"stages": {"a": {"notebook": notebook, "parameters": {"stages": "all"}}}})
    )
    path = write(tmp_path, {"stages": {"a": {"notebook": notebook, "parameters": {"size": "all"}}}})
    with pytest.raises(BatchError, match="key 'parameters.size': 'all' is a text"):
        config.load(path)


def test_unknown_encoder_method_and_decoder_names_are_refused(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    source = 'encoders = {"text": "tfidf"}\nmethods = ["concat"]\ndecoder = "transformer"'
    for stem in ("fusion_names", "caption_names"):
        cell = new_code_cell(source)
        cell.metadata["tags"] = ["parameters"]
        nbformat.write(new_notebook(cells=[cell]), tmp_path / f"{stem}.ipynb")
    fusion = {
        "notebook": str(tmp_path / "fusion_names.ipynb"),
        "parameters": {
            "encoders": {"text": "tfidff", "image": "efficientnet_lite0:size=3", "smell": "x"},
            "methods": ["unimodal:text", "concat", "late:foo=1", "nope"],
            "decoder": "anything",  # not a caption notebook: not a decoder name here
        },
    }
    caption = {"notebook": str(tmp_path / "caption_names.ipynb"), "parameters": {"decoder": "gpt"}}
    path = write(tmp_path, {"stages": {"fusion": fusion, "caption": caption}})
    with pytest.raises(BatchError) as info:
        config.load(path)
    message = str(info.value)
    for expected in (
        "stage 'fusion': key 'parameters.encoders.text': unknown text encoder 'tfidff'; valid "
        "names: ",
        "stage 'fusion': key 'parameters.encoders.image': image encoder 'efficientnet_lite0' "
        "takes no option 'size'",
        "stage 'fusion': key 'parameters.encoders.smell': unknown modality 'smell'",
        "stage 'fusion': key 'parameters.methods': fusion method 'late' takes no option 'foo'",
        "stage 'fusion': key 'parameters.methods': unknown fusion method 'nope'; valid names: ",
        "stage 'caption': key 'parameters.decoder': unknown caption decoder 'gpt'; valid names: ",
    ):
        assert expected in message, (expected, message)
    assert len(message.splitlines()) == 6


def test_an_unknown_key_no_longer_hides_the_stage_s_other_problems(tmp_path):
    stage = {"notebook": "notebooks/missing.ipynb", "paramters": {"x": 1}, "timeout": -1}
    with pytest.raises(BatchError) as info:
        config.load(write(tmp_path, {"stages": {"one": stage}}))
    message = str(info.value)
    assert "stage 'one': key 'paramters': unknown key" in message
    assert "stage 'one': key 'timeout': Input should be greater than 0" in message
    assert "stage 'one': key 'notebook': 'notebooks/missing.ipynb' not found" in message
    stage = {**ok(parameters={"nope": 1}), "paramters": {}}
    with pytest.raises(BatchError, match="key 'parameters.nope'"):
        config.load(write(tmp_path, {"stages": {"one": stage}}))


def test_a_batch_file_elsewhere_finds_notebooks_in_the_workspace(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    (workspace / "notebooks").mkdir(parents=True)
    (workspace / "notebooks" / "mine.ipynb").write_bytes((NOTEBOOKS / "ok.ipynb").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write(elsewhere, {"stages": {"a": {"notebook": "notebooks/mine.ipynb"}}})
    monkeypatch.setenv("MMLAB_HOME", str(workspace))
    batch = config.load(path)
    assert batch.stages["a"][0].notebook == workspace / "notebooks" / "mine.ipynb"
    monkeypatch.setenv("MMLAB_HOME", str(elsewhere))
    with pytest.raises(BatchError, match=f"upwards and in the workspace {elsewhere}"):
        config.load(path)
