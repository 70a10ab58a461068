"""Linear probe, projections, throughput timing, and notebook 01's survey on the tiny dataset."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from mmlab.features import probe, survey
from mmlab.plots import features as plots

matplotlib.use("Agg")


def blobs(n: int, seed: int, dim: int = 8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, dim)) + 4 * np.eye(3, dim)[y]
    return torch.tensor(x, dtype=torch.float32), [f"c{v}" for v in y]


def test_linear_probe_separates_blobs_and_fails_on_noise():
    x, y = blobs(150, 0)
    xt, yt = blobs(60, 1)
    assert probe.linear_probe(x, y, xt, yt) > 0.9
    noise = torch.randn(150, 8)
    assert probe.linear_probe(noise, y, torch.randn(60, 8), yt) < 0.6
    with pytest.raises(ValueError, match="differ in length"):
        probe.linear_probe(x, y[:-1], xt, yt)


def test_as_vectors_pools_grids_and_unpadded_steps():
    grid = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 2, 2)
    np.testing.assert_allclose(probe.as_vectors(grid), grid.mean(dim=(2, 3)).numpy())
    cells = probe.as_vectors(grid, grid_cells=2)  # a 2x2 grid kept as it is, flattened
    np.testing.assert_allclose(cells, grid.flatten(1).numpy())
    seq = torch.zeros(1, 4, 2)
    seq[0, :2] = torch.tensor([[1.0, 3.0], [3.0, 5.0]])  # two real steps, two padding
    np.testing.assert_allclose(probe.as_vectors(seq), [[2.0, 4.0]])


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_projections_are_2d(method):
    x, _ = blobs(40, 2, dim=60)
    assert probe.project(x, method).shape == (40, 2)


def test_unknown_projection_lists_valid():
    with pytest.raises(KeyError, match="pca, tsne"):
        probe.project(torch.randn(5, 3), "umap")


def test_a_grid_probe_sees_where_things_are():
    # The class is which half of the grid is lit: invisible once averaged, plain in cells.
    rng = np.random.default_rng(0)

    def lit(n):
        y = rng.integers(0, 2, n)
        x = torch.zeros(n, 1, 4, 4)
        for i, side in enumerate(y):
            x[i, 0, :, 2 * side : 2 * side + 2] = 1.0
        return x + 0.1 * torch.randn_like(x), list(y)

    (x, y), (xt, yt) = lit(80), lit(40)
    assert probe.linear_probe(x, y, xt, yt, grid_cells=2) > 0.95
    assert probe.linear_probe(x, y, xt, yt) < 0.75


def test_timed_reports_items_per_second():
    t = probe.timed(lambda: torch.zeros(10, 3))
    assert t.features.shape == (10, 3) and t.items_per_s > 0


def test_survey_on_the_tiny_dataset(tiny_synthetic):
    from mmlab.data import load_dataset

    ds = load_dataset(tiny_synthetic)
    encoders = {"image": ["small_cnn"], "text": ["tfidf"], "audio": ["mfcc"]}
    results = survey.encode_all(ds, encoders, image_size=32, progress=False, throughput_items=8)
    summary = survey.summary_table(results)
    assert list(summary["encoder"]) == ["small_cnn", "tfidf", "mfcc"]
    assert (summary["items_per_s"] > 0).all()
    for r in results:
        assert r.features["train"].shape[0] == len(ds["train"])
        assert r.features["test"].shape[0] == len(ds["test"])
    table = survey.probe_table(results, ds, targets=("first_shape", "first_colour"))
    assert len(table) == 6 and table["accuracy"].between(0, 1).all()
    # The caption names the first object's colour: TF-IDF of it should beat the majority rate.
    tfidf = table.query("encoder == 'tfidf' and target == 'first_colour'").iloc[0]
    assert tfidf["accuracy"] >= tfidf["majority"]
    # Figures build from these tables.
    plots.probe_accuracies(table)
    plots.throughput(summary)
    points = {r.label: probe.project(r.features["test"], "pca") for r in results}
    plots.projections(points, ds["test"]["first_shape"])
    plots.sample_grid([ds["train"][i]["image"] for i in range(4)], ds["train"]["captions"][:4])
    with pytest.raises(KeyError, match="'nope'"):
        survey.probe_table(results, ds, targets=("nope",))


def test_video_cost_table_on_the_tiny_dataset(tiny_synthetic):
    """Notebook 01's motion section: cost per clip against frame_mean, motion probe accuracy."""
    from mmlab.data import load_dataset

    ds = load_dataset(tiny_synthetic)
    results = survey.encode_all(
        ds,
        {"video": ["frame_mean", "two_stream"]},
        options={"video": {"frame_encoder": "small_cnn"}},
        progress=False,
        throughput_items=4,
    )
    probes = survey.probe_table(results, ds, targets=("motion",))
    table = survey.cost_table(results, probes, "video", "motion", baseline="frame_mean")
    assert list(table.columns) == [
        "encoder",
        "ms_per_item",
        "cost_vs_frame_mean",
        "accuracy_motion",
        "majority",
    ]
    assert list(table["encoder"]) == ["frame_mean", "two_stream"]
    assert table["cost_vs_frame_mean"].iloc[0] == 1 and (table["ms_per_item"] > 0).all()
    assert table["accuracy_motion"].between(0, 1).all()
    # Even on a few dozen clips the flow histogram tells the direction better than the frames.
    frame_mean, two_stream = table["accuracy_motion"]
    assert two_stream > frame_mean and two_stream > table["majority"].iloc[0]
    plots.cost_vs_accuracy(table, "accuracy_motion")
    # Without the baseline or the target, the columns stay and hold NaN.
    alone = survey.cost_table(results[1:], probes.iloc[0:0], "video", "motion", "frame_mean")
    assert alone[["cost_vs_frame_mean", "accuracy_motion"]].isna().all().all()
    assert survey.cost_table(results, probes, "audio", "motion", "mfcc").empty
