"""The shipped notebooks, end to end: `mmlab run params/smoke.yaml` through the real CLI.

One batch runs all four notebooks on tiny settings with real Papermill kernels and a real
MLflow store; the assertions are what a researcher opening the MLflow UI relies on. The batch
is the session's `smoke_batch` fixture (tests/conftest.py), shared with the browser tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.slow


def test_smoke_batch_runs_every_notebook(smoke_batch):
    done, _, _ = smoke_batch
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in NOTEBOOKS:
        assert name in done.stdout, f"{name} missing from the batch summary"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_notebook_leaves_a_finished_run_with_notebook_and_headline(smoke_batch, notebook):
    _, client, _ = smoke_batch
    experiment = client.get_experiment_by_name(notebook)
    assert experiment is not None, f"no MLflow experiment {notebook}"
    runs = client.search_runs([experiment.experiment_id], "tags.`mmlab.stage` != ''")
    assert runs, f"no batch run in {notebook}"
    run = runs[0]
    assert run.info.status == "FINISHED"
    headline = run.data.tags.get("mmlab.headline")
    assert headline and headline in run.data.metrics, run.data.tags
    attached = [a.path for a in client.list_artifacts(run.info.run_id, "notebook")]
    assert any(p.endswith(".ipynb") for p in attached) and any(
        p.endswith(".html") for p in attached
    )


def test_the_fusion_run_holds_one_child_run_per_method_and_seed(smoke_batch):
    """The smoke batch compares 6 methods (unimodal counts twice) x 2 seeds: 12 nested runs
    under the stage's run, which keeps its own name (the first child used to reopen it)."""
    _, client, _ = smoke_batch
    experiment = client.get_experiment_by_name("02_fusion_comparison")
    parent = client.search_runs([experiment.experiment_id], "tags.`mmlab.stage` = 'fusion'")[0]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = {c.info.run_name for c in children}
    assert len(children) == 12 and "grid_cross_attention-seed1" in names, sorted(names)
    assert parent.info.run_name not in names


def test_the_label_stage_compares_each_target_with_each_modality_removed(smoke_batch):
    """The smoke batch's label stage: 2 targets x (4 baselines + concat + late) x 1 seed, the
    target x method table and the table with each modality removed logged beside them."""
    _, client, _ = smoke_batch
    experiment = client.get_experiment_by_name("02_fusion_comparison")
    stage = "tags.`mmlab.stage` = 'fusion_label'"
    parent = client.search_runs([experiment.experiment_id], stage)[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = {c.info.run_name for c in children}
    assert len(children) == 12 and "circle_xor_sideways:concat-seed0" in names, sorted(names)
    concat = next(c for c in children if c.info.run_name == "motion:concat-seed0")
    assert concat.data.tags["modalities"] == "image,text,audio,video"
    assert {f"test_accuracy_without_{m}" for m in ("image", "text", "audio", "video")} <= set(
        concat.data.metrics
    )
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"accuracy_by_target.csv", "accuracy_without_modality.csv"} <= logged, logged


@pytest.mark.parametrize(
    ("pairs", "artifacts", "missing"),
    [
        ("[audio-text, image-audio]", {"example_hits.csv", "zero_shot.csv"}, {"top5.png"}),
        ("[image-audio]", {"similarity_matrix.png"}, {"example_hits.csv", "zero_shot.csv"}),
    ],
)
def test_retrieval_figures_follow_the_first_pair(smoke_batch, tmp_path, pairs, artifacts, missing):
    """Notebook 05 by plain papermill with a first pair other than image-text: caption queries
    answered by sounds come as a table of hits (no image grid), and a pair without text has
    no caption queries, prompts or search model; both runs finish. The smoke batch's
    workspace lends its cached features; the runs go to a store of their own, so the smoke
    batch's store holds that batch alone (test_server compares it run by run)."""
    from mlflow.tracking import MlflowClient

    _, _, home = smoke_batch
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    out = tmp_path / "out.ipynb"
    env = {**os.environ, "MMLAB_HOME": str(home), "MLFLOW_TRACKING_URI": uri}
    env.pop("MLFLOW_RUN_ID", None)
    options = [
        "-p",
        "dataset",
        "synthetic:n=60,seed=0,image_size=64",
        "-y",
        f"{{pairs: {pairs}, seeds: 1, epochs: 1, batch_size: 32, dim: 32, width: 32, "
        "encoders: {image: 'efficientnet_lite0:image_size=64,kind=grid,layer=mid'}, "
        "queries_shown: 2, matrix_size: 6, device: cpu}",
    ]
    notebook = REPO / "notebooks" / "05_cross_modal_retrieval.ipynb"
    cmd = [
        str(Path(sys.executable).parent / "papermill"),
        str(notebook),
        str(out),
        *options,
        "--cwd",
        str(notebook.parent),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    printed = "".join(
        "".join(o.get("text", ""))
        for c in json.loads(out.read_text())["cells"]
        for o in c.get("outputs", [])
    )
    run = client.get_run(re.search(r"MLflow run (\w+)", printed).group(1))
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts <= logged and not missing & logged, logged


def test_notebooks_are_committed_without_outputs():
    for path in (REPO / "notebooks").glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), path
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), path
