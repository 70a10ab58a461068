"""MultiBench's robustness test: imperfections, curves, relative and effective robustness, on a
toy task whose answer only one modality carries, and end to end on the tiny embedded dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmlab.fusion import compare, inputs
from mmlab.fusion import robustness as robust
from mmlab.fusion.methods import InputSpec, create
from mmlab.fusion.train import Split, TrainConfig, train_fusion
from mmlab.plots import fusion as plots


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_image_corruptions_at_their_extremes():
    image = _image()
    for kind in robust.IMAGE_KINDS:
        assert np.array_equal(np.asarray(robust.corrupt_image(image, kind, 0.0)), image)
        assert robust.corrupt_image(image, kind, 0.5, seed=1).size == image.size
    grey = np.asarray(robust.corrupt_image(image, "grayscale", 1.0)).astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    flat = np.asarray(robust.corrupt_image(image, "contrast", 1.0))
    assert flat.std(axis=(0, 1)).max() < 1
    salted = np.asarray(robust.corrupt_image(image, "salt_pepper", 1.0))
    assert set(np.unique(salted)) <= {0, 255}
    noisy = [np.asarray(robust.corrupt_image(image, "pixel_noise", 0.3, seed=s)) for s in (1, 1)]
    assert np.array_equal(*noisy)  # seeded
    with pytest.raises(ValueError, match="valid"):
        robust.check_kinds(["gaussian", "fog"])


def _toy(n, seed):
    """`signal` holds the label; `distractor` is noise the model can learn to ignore."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    signal = torch.randn(n, 8, generator=g) * 0.3 + labels[:, None].float() * 2 - 1
    return Split({"signal": signal, "distractor": torch.randn(n, 8, generator=g)}, labels)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    specs = {m: InputSpec("pooled", 8) for m in ("signal", "distractor")}
    train, val = _toy(512, 0), _toy(128, 1)
    models = {}
    for name in ("concat", "late"):
        model = create(name, specs, 2, hidden=16)
        models[name] = train_fusion(model, train, val, TrainConfig(epochs=8, lr=1e-2)).model
    scales = {m: x.std(0) for m, x in train.inputs.items()}
    return models, _toy(256, 2), robust.Imperfections(robust.FEATURE_KINDS, scales)


def test_curves_fall_only_for_the_modality_that_carries_the_answer(trained):
    models, test, imperfections = trained
    curve = robust.curves(models["concat"], test, imperfections)
    assert set(curve["modality"]) == {"signal", "distractor", robust.ALL}
    assert len(curve) == 2 * 3 * len(robust.LEVELS)
    at = curve.set_index(["kind", "modality", "level"])["accuracy"]
    assert at["gaussian", "signal", 0.0] > 0.95
    assert at["dropout", "signal", 1.0] < 0.7  # every entry of the answer's modality dropped
    assert at["gaussian", "distractor", 1.0] > 0.9  # what the model ignores costs little
    assert at["gaussian", "all", 1.0] < at["gaussian", "signal", 0.0]
    metrics = robust.metrics(curve)
    assert (
        metrics["relative_robustness/gaussian/distractor"]
        > (metrics["relative_robustness/dropout/signal"])
    )


def test_effective_robustness_is_measured_against_late_fusion(trained):
    models, test, imperfections = trained
    table = pd.concat(
        robust.curves(model, test, imperfections).assign(method=name, seed=0)
        for name, model in models.items()
    )
    summary = robust.summarize(table).set_index(["method", "modality", "kind"])
    late = summary.loc["late"]
    assert np.allclose(late["effective_robustness"], 0)  # the baseline against itself
    concat = summary.loc["concat", "signal", "dropout"]
    assert concat["relative_robustness"] == pytest.approx(
        robust.area(
            robust.LEVELS,
            table.query("method == 'concat' and modality == 'signal' and kind == 'dropout'")[
                "accuracy"
            ],
        )
    )
    no_baseline = robust.summarize(table[table["method"] == "concat"])
    assert no_baseline["effective_robustness"].isna().all()


def test_area_spans_the_levels():
    assert robust.area([0, 0.5, 1], [1, 1, 1]) == pytest.approx(1)
    assert robust.area([0, 1], [1, 0]) == pytest.approx(0.5)


def test_comparison_tests_pooled_methods_under_raw_image_corruptions(tiny_synthetic):
    from mmlab.data import load_dataset

    ds = load_dataset(str(tiny_synthetic))
    encoders = {"image": "efficientnet_lite0:image_size=64", "text": "minilm"}
    data = inputs.build(ds, "match", encoders, device="cpu")
    levels = (0.0, 0.5, 1.0)
    imperfections = robust.prepare(data, ds, ["dropout", "grayscale"], levels=levels)
    assert set(imperfections.images) == {("grayscale", 0.5), ("grayscale", 1.0)}
    assert robust.prepare(data, ds, []) is None
    result = compare.run(
        data,
        ["unimodal:image", "concat"],
        seeds=[0],
        config=TrainConfig(epochs=1),
        hidden=16,
        log=False,
        workers=1,
        imperfections=imperfections,
    )
    image_curve = result.curves.query("kind == 'grayscale'")
    assert set(image_curve["method"]) == {"unimodal_image", "concat"}
    assert sorted(image_curve["level"].unique()) == list(levels)
    assert "relative_robustness/grayscale/image" in result.runs.columns
    summary = result.robustness()
    assert {"clean", "worst", "relative_robustness", "effective_robustness"} <= set(summary)
    fig = plots.robustness_curves(result.curves, chance=result.chance)
    panels = [ax for ax in fig.axes if ax.lines]  # dropout on image, text, all; grayscale
    assert len(panels) == 4 and all(len(ax.lines) == 2 for ax in panels)  # concat and chance
