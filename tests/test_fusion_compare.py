"""Fusion inputs from the real feature cache, the method x seed comparison with real MLflow
child runs, the statistics and the figures, on the tiny embedded dataset."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mmlab import fusion, tracking
from mmlab.core import stats  # noqa: E402
from mmlab.fusion import compare, inputs  # noqa: E402
from mmlab.plots import fusion as plots  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as each worker process has: a module-level set_num_threads would be undone by
    whichever test module pytest imports after this one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ENCODERS = {"image": "efficientnet_lite0:image_size=64", "text": "minilm"}
TOKENS = {"image": "efficientnet_lite0:image_size=64,kind=grid,layer=mid", "text": "vocab"}


@pytest.fixture(scope="module")
def tiny_ds(tiny_synthetic):
    from mmlab.data import load_dataset

    return load_dataset(str(tiny_synthetic))


@pytest.fixture(scope="module")
def data(tiny_ds):
    return inputs.build(tiny_ds, "match", ENCODERS, TOKENS, device="cpu")


def test_parse_encoder_forms():
    assert inputs.parse_encoder("minilm") == ("minilm", {})
    assert inputs.parse_encoder("efficientnet_lite0:image_size=128,kind=grid,lr=0.5") == (
        "efficientnet_lite0",
        {"image_size": 128, "kind": "grid", "lr": 0.5},
    )
    assert inputs.parse_encoder({"name": "x", "layer": "mid"}) == ("x", {"layer": "mid"})
    with pytest.raises(ValueError, match="not key=value"):
        inputs.parse_encoder("x:oops")


def test_build_gives_pooled_and_token_inputs_for_every_split(data, tiny_ds):
    assert data.modalities == ["image", "text"] and data.class_names == ["0", "1"]
    pooled, tokens = data.specs["pooled"], data.specs["tokens"]
    assert pooled["image"] == fusion.InputSpec("pooled", 1280)
    assert pooled["text"] == fusion.InputSpec("pooled", 384)
    assert tokens["image"].kind == "grid" and tokens["image"].shape == (4, 4)
    assert tokens["text"].kind == "ids" and tokens["text"].dim == len(data.vocabulary)
    vocabulary = data.vocabulary  # the words' ids, apart from padding, start, end, unknown
    assert tokens["text"].unk_id == vocabulary.unk_id
    assert set(tokens["text"].special_ids) == {
        vocabulary.pad_id,
        vocabulary.start_id,
        vocabulary.end_id,
        vocabulary.unk_id,
    }
    assert data.described_class == data.class_names.index("1")  # matching captions describe
    for split in ("train", "validation", "test"):
        s = data.split("tokens", split)
        assert len(s) == len(tiny_ds[split]) == len(data.split("pooled", split))
        assert s.groups == list(tiny_ds[split]["match_kind"])
        assert s.labels.tolist() == list(tiny_ds[split]["match_label"])
        first = tiny_ds[split]["match_caption"][0]
        assert data.vocabulary.decode(s.inputs["text"][0]) == " ".join(
            __import__("mmlab.data.text", fromlist=["tokenize"]).tokenize(first)
        )


def test_build_explains_bad_requests(tiny_ds):
    with pytest.raises(KeyError, match="valid tasks: match, label"):
        inputs.build(tiny_ds, "nope", ENCODERS)
    with pytest.raises(KeyError, match="label column 'label'"):
        inputs.build(tiny_ds, "label", ENCODERS)
    with pytest.raises(KeyError, match="needs column 'smell'"):
        inputs.build(tiny_ds, "match", {"smell": "x"})
    with pytest.raises(ValueError, match="is for text"):
        inputs.build(tiny_ds, "match", token_encoders={"image": "vocab"})


def test_label_task_maps_label_values_to_classes(tiny_ds):
    ds = {s: tiny_ds[s].add_column("label", tiny_ds[s]["first_shape"]) for s in tiny_ds}
    data = inputs.build(ds, "label", {"text": "minilm"}, device="cpu")
    assert data.class_names == sorted(set(ds["train"]["first_shape"]))
    names = [data.class_names[i] for i in data.split("pooled", "test").labels]
    assert names == list(ds["test"]["first_shape"])
    assert data.split("pooled", "test").groups is None
    assert data.described_class is None  # every sample's text goes with its image


def test_expand_turns_unimodal_into_one_baseline_per_modality():
    labels = [c.label for c in compare.expand(["concat", "unimodal"], ["image", "text"])]
    assert labels == ["concat", "unimodal_image", "unimodal_text"]
    assert [c.label for c in compare.expand(["unimodal:text"], ["image", "text"])] == [
        "unimodal_text"
    ]
    with pytest.raises(KeyError, match="valid names"):
        compare.expand(["nope"], ["image"])
    with pytest.raises(ValueError, match="'audio' is not among"):
        compare.expand(["unimodal:audio"], ["image", "text"])


def test_expand_reads_a_methods_options_for_an_ablation_beside_the_default():
    choices = compare.expand(
        ["grid_cross_attention", "grid_cross_attention:masked_words=0,heads=2"], ["image", "text"]
    )
    assert [c.label for c in choices] == [
        "grid_cross_attention",
        "grid_cross_attention:masked_words=0,heads=2",
    ]
    assert dict(choices[1].options) == {"masked_words": 0, "heads": 2}
    with pytest.raises(ValueError, match="method 'concat:fast'.*not key=value"):
        compare.expand(["concat:fast"], ["image"])


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.finish()
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_comparison_logs_a_child_run_per_method_and_seed(data, store):
    parent = tracking.start(notebook="02_test", params={"x": 1})
    methods = ["weighted_sum", "grid_cross_attention", "unimodal"]
    config = fusion.TrainConfig(epochs=2, batch_size=16)
    result = compare.run(data, methods, seeds=[0, 1], config=config, hidden=16, progress=None)
    tracking.finish()

    assert len(result.runs) == 4 * 2
    assert set(result.runs["method"]) == {
        "weighted_sum",
        "grid_cross_attention",
        "unimodal_image",
        "unimodal_text",
    }
    kinds = {f"test_accuracy/{k}" for k in data.split("pooled", "test").groups}
    assert kinds <= set(result.runs.columns)
    client = MlflowClient(store)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == 8
    child = next(c for c in children if c.info.run_name == "grid_cross_attention-seed1")
    assert child.data.tags["fusion_method"] == "grid_cross_attention"
    assert child.data.tags["seed"] == "1" and child.data.tags["modalities"] == "image,text"
    assert child.data.params["input_form"] == "tokens"
    for metric in ("test_accuracy", "test_f1", "n_parameters", "train_seconds", "latency_ms"):
        assert metric in child.data.metrics
    curve = client.get_metric_history(child.info.run_id, "val_accuracy")
    assert (
        len(curve)
        == result.runs.query("method == 'grid_cross_attention' and seed == 1")["epochs_run"].item()
    )
    # the token method's masked-word objective is logged beside the task's loss
    assert len(client.get_metric_history(child.info.run_id, "train_auxiliary_loss")) == len(curve)
    pooled = next(c for c in children if c.info.run_name == "weighted_sum-seed1")
    assert "train_auxiliary_loss" not in pooled.data.metrics and "train_loss" in pooled.data.metrics
    # the learned weights of weighted_sum are reported per seed and modality, summing to one
    w = result.weights
    assert set(w["method"]) == {"weighted_sum"}
    assert np.allclose(w.groupby("seed")["weight"].sum(), 1.0)


def test_summary_and_group_tables(data):
    config = fusion.TrainConfig(epochs=1, batch_size=16)
    result = compare.run(
        data, ["concat", "late"], seeds=[0, 1, 2], config=config, hidden=8, log=False, progress=None
    )
    summary = result.summary()
    assert list(summary["method"]) == sorted(
        ["concat", "late"], key=lambda m: -result.runs.query("method == @m")["test_accuracy"].mean()
    )
    row = summary.iloc[0]
    ci = stats.mean_ci(result.runs.query("method == @row.method")["test_accuracy"])
    assert row["mean"] == pytest.approx(ci.mean) and row["ci_low"] == pytest.approx(ci.low)
    assert row["p_vs_best"] == 1.0 and result.best_method == row["method"]
    groups = result.by_group()
    assert list(groups.index) == list(summary["method"])
    assert list(groups.columns)[0] == "all"  # the total beside each kind
    assert set(groups.columns[1:]) == set(data.split("pooled", "test").groups)
    means = result.runs.groupby("method")["test_accuracy"].mean()
    assert groups["all"].to_dict() == pytest.approx(means.to_dict())
    for fig in (
        plots.accuracy_bars(summary, chance=result.chance),
        plots.cost_scatter(summary),
        plots.group_heatmap(groups),
        plots.validation_curves(result.histories),
    ):
        assert fig.axes
    with pytest.raises(ValueError, match="no modality weights"):
        plots.modality_weights(result.weights)


def test_mean_ci_matches_the_t_distribution():
    ci = stats.mean_ci([0.8, 0.9, 1.0])
    assert ci.mean == pytest.approx(0.9) and ci.std == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t(0.975, df=2)
    assert (ci.low, ci.high) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    one = stats.mean_ci([0.7])
    assert (one.low, one.high, one.std) == (0.7, 0.7, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        stats.mean_ci([])


def test_paired_p_value_and_summarize():
    assert stats.paired_p_value([0.9, 0.8, 0.85], [0.9, 0.8, 0.85]) == 1.0
    assert stats.paired_p_value([0.9, 0.91, 0.95], [0.5, 0.52, 0.5]) < 0.05
    assert np.isnan(stats.paired_p_value([0.9], [0.5]))
    frame = pd.DataFrame(
        {"m": ["a", "a", "b", "b"], "acc": [0.5, 0.6, 0.9, 0.8], "t": [1, 3, 2, 2]}
    )
    table = stats.summarize(frame, "m", "acc", extra=["t"])
    assert list(table["m"]) == ["b", "a"] and table["t"].tolist() == [2.0, 2.0]
    with pytest.raises(KeyError, match="'nope'"):
        stats.summarize(frame, "m", "nope")


def test_extra_pairs_add_training_captions_that_share_the_image_features(tiny_ds, data):
    more = inputs.build(tiny_ds, "match", ENCODERS, TOKENS, device="cpu", extra_pairs=2)
    n = len(tiny_ds["train"])
    for form in ("pooled", "tokens"):
        train = more.split(form, "train")
        assert len(train) == 3 * n and len(train.groups) == 3 * n
        image = train.inputs["image"]
        assert torch.equal(image[:n], data.split(form, "train").inputs["image"])
        assert torch.equal(image[n], image[0]) and torch.equal(image[n + 1], image[0])
        assert torch.equal(more.split(form, "test").labels, data.split(form, "test").labels)
    # the extra captions are new text: their MiniLM vectors differ from the original's
    text = more.split("pooled", "train").inputs["text"]
    assert torch.allclose(text[:n], data.split("pooled", "train").inputs["text"], atol=1e-5)
    assert set(more.split("pooled", "train").groups[n:]) <= {
        "positive",
        "colour",
        "shape",
        "size",
        "relation",
    }
    with pytest.raises(ValueError, match="extra_pairs needs the match task"):
        ds = {s: tiny_ds[s].add_column("label", tiny_ds[s]["first_shape"]) for s in tiny_ds}
        inputs.build(ds, "label", {"text": "minilm"}, device="cpu", extra_pairs=1)


def test_extra_positive_pairs_describe_the_image_row_they_are_paired_with(tiny_ds):
    """A positive extra pair must mention only colours and shapes of its own image's scene,
    and its word ids must be its caption's (guards against misaligned image/caption rows)."""
    from mmlab.data.synthetic import mentions, scene_from_row

    more = inputs.build(tiny_ds, "match", None, TOKENS, device="cpu", extra_pairs=3)
    train, n = more.split("tokens", "train"), len(tiny_ds["train"])
    extra = inputs._extra_pairs(tiny_ds["train"], more.task, 3)
    rows = tiny_ds["train"].select_columns(["id", "objects", "motion"]).to_list()
    assert torch.equal(train.labels[n:], extra.labels)
    texts = more.vocabulary.decode_batch(train.inputs["text"][n:])
    positives = 0
    pairs = zip(texts, extra.captions, extra.rows, extra.labels, strict=True)
    for text, caption, row, label in pairs:
        assert mentions(text) == mentions(caption)
        scene = scene_from_row(rows[int(row)])
        seen = {("colour", o.colour) for o in scene.objects} | {
            ("shape", o.shape) for o in scene.objects
        }
        said = {m for m in mentions(caption) if m[0] in ("colour", "shape")}
        if label == 1:
            positives += 1
            assert said <= seen, (caption, scene)
    assert positives > 0
    image = train.inputs["image"]
    assert torch.equal(image[n:], image[:n][extra.rows])


def test_extra_pairs_keep_a_fitted_text_encoder_fitted_on_the_train_split(tiny_ds):
    """TF-IDF vectors of the extra captions come from the vectoriser fitted on the train
    split (one feature space), not from one refitted on the extra captions alone."""
    from mmlab import features

    more = inputs.build(
        tiny_ds, "match", {"image": ENCODERS["image"], "text": "tfidf"}, device="cpu", extra_pairs=1
    )
    n = len(tiny_ds["train"])
    extra = inputs._extra_pairs(tiny_ds["train"], more.task, 1)
    tfidf = features.create("text", "tfidf")
    tfidf.fit(tiny_ds["train"]["match_caption"])
    expected = tfidf.extract(extra.captions).float()
    got = more.split("pooled", "train").inputs["text"][n:].float()
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


def test_extra_pairs_with_sequence_text_features_share_the_splits_length(tiny_ds):
    """Token-state text features of extra captions are cut or padded to the length of the
    other splits (an extra caption longer than every real one used to be cut one token short)."""
    k = 3
    more = inputs.build(
        tiny_ds,
        "match",
        None,
        {"image": ENCODERS["image"], "text": "minilm:kind=sequence"},
        device="cpu",
        extra_pairs=k,
    )
    train = more.split("tokens", "train").inputs["text"]
    width = more.split("tokens", "validation").inputs["text"].shape[1]
    assert train.shape[:2] == (len(tiny_ds["train"]) * (1 + k), width)
    assert more.specs["tokens"]["text"].kind == "sequence"


def test_mismatched_negatives_pair_a_positive_caption_with_another_image(tiny_ds, data):
    k = 2
    more = inputs.build(
        tiny_ds, "match", ENCODERS, TOKENS, device="cpu", extra_pairs=k, mismatched=0.5
    )
    base = inputs.build(tiny_ds, "match", ENCODERS, TOKENS, device="cpu", extra_pairs=k)
    for form in ("pooled", "tokens"):
        train, plain = more.split(form, "train"), base.split(form, "train")
        n = len(plain)
        new = len(train) - n
        positives = int((plain.labels == 1).sum())
        assert 0 < new <= round(0.5 * positives) and train.groups[n:] == ["mismatched"] * new
        assert (train.labels[n:] == 0).all() and torch.equal(train.labels[:n], plain.labels)
        text, image = train.inputs["text"], train.inputs["image"]
        for i in range(n, len(train)):
            # the caption is a positive one of the plain split; the image is another row's
            (caption,) = [j for j in range(n) if torch.equal(plain.inputs["text"][j], text[i])][:1]
            assert plain.labels[caption] == 1
            assert not torch.equal(plain.inputs["image"][caption], image[i])
        # validation and test are untouched
        assert torch.equal(more.split(form, "test").labels, data.split(form, "test").labels)
    with pytest.raises(ValueError, match="mismatched negatives need the match task"):
        ds = {s: tiny_ds[s].add_column("label", tiny_ds[s]["first_shape"]) for s in tiny_ds}
        inputs.build(ds, "label", {"text": "minilm"}, device="cpu", mismatched=0.5)


def test_worker_processes_give_the_results_of_one_process(data):
    """Runs trained side by side in worker processes (one thread each) are the runs trained
    one after another here: same seeds, same numbers, the table in the same order."""
    config = fusion.TrainConfig(epochs=2, batch_size=16)
    options = dict(seeds=[0, 1], config=config, hidden=8, log=False, progress=None)
    methods = ["concat", "grid_cross_attention"]
    here = compare.run(data, methods, workers=1, **options)
    workers = compare.run(data, methods, workers=2, **options)
    timing = ["train_seconds", "latency_ms"]
    pd.testing.assert_frame_equal(here.runs.drop(columns=timing), workers.runs.drop(columns=timing))
    assert here.histories == workers.histories


FOUR = {
    "image": "efficientnet_lite0:image_size=64",
    "text": "tfidf",
    "audio": "mfcc",
    "video": "frame_mean:num_frames=2,image_size=32",
}


@pytest.fixture(scope="module")
def label_data(tiny_ds):
    return inputs.build(tiny_ds, "label", FOUR, device="cpu", target="motion")


def test_label_task_fuses_four_modalities_for_any_target(label_data, tiny_ds):
    assert label_data.modalities == ["image", "text", "audio", "video"]
    assert label_data.task.label_column == "motion"
    test = label_data.split("pooled", "test")
    assert [label_data.class_names[i] for i in test.labels] == list(tiny_ds["test"]["motion"])
    composite = inputs.relabel(label_data, tiny_ds, "circle_xor_sideways")
    assert composite.class_names == ["no", "yes"]
    for split in ("train", "test"):  # the features are shared, only the labels change
        a, b = label_data.split("pooled", split), composite.split("pooled", split)
        assert all(a.inputs[m] is b.inputs[m] for m in label_data.modalities)
    with pytest.raises(ValueError, match="target='motion' is for the label task"):
        inputs.build(tiny_ds, "match", ENCODERS, target="motion")
    with pytest.raises(KeyError, match=r"modalities \['smell'\] have no encoder"):
        inputs.select(FOUR, ["image", "smell"])
    assert list(inputs.select(FOUR, ["video", "text"])) == ["video", "text"]


def test_each_target_is_compared_with_every_modality_removed_in_turn(label_data, tiny_ds, store):
    parent = tracking.start(notebook="02_test", params={"x": 1})
    config = fusion.TrainConfig(epochs=2, batch_size=16)
    comparisons = compare.run_targets(
        label_data,
        tiny_ds,
        ["motion", "circle_xor_sideways"],
        ["unimodal", "concat", "late"],
        seeds=[0],
        config=config,
        hidden=8,
        workers=1,
        progress=None,
        modality_dropout=0.3,
    )
    tracking.finish()
    assert list(comparisons) == ["motion", "circle_xor_sideways"]
    methods = [
        "unimodal_image",
        "unimodal_text",
        "unimodal_audio",
        "unimodal_video",
        "concat",
        "late",
    ]
    table = compare.by_target(comparisons)
    assert list(table.columns) == ["motion", "circle_xor_sideways"]
    assert set(table.index) == {*methods, "chance"}
    assert table.loc["chance", "motion"] == comparisons["motion"].chance
    missing = compare.missing_by_target(comparisons)
    assert list(missing.columns) == ["none", "image", "text", "audio", "video"]
    assert set(missing.index) == {(t, m) for t in comparisons for m in methods}
    # a baseline does not see the other modalities: removing them changes nothing
    row = missing.loc[("motion", "unimodal_video")]
    assert row["image"] == row["text"] == row["audio"] == row["none"]
    runs = compare.all_runs(comparisons)
    assert list(runs["target"].unique()) == ["motion", "circle_xor_sideways"]
    assert len(runs) == 2 * len(methods)
    fig = plots.group_heatmap(missing, title="with a modality removed")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][
        0
    ] == f"motion · {missing.index[0][1]}"

    client = MlflowClient(store)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == len(runs)
    child = next(c for c in children if c.info.run_name == "circle_xor_sideways:concat-seed0")
    assert child.data.tags["fusion_target"] == "circle_xor_sideways"
    assert child.data.tags["modalities"] == "image,text,audio,video"
    assert child.data.params["option.modality_dropout"] == "0.3"
    assert "test_accuracy_without_video" in child.data.metrics


def test_run_targets_of_the_match_task_is_one_comparison(data, tiny_ds):
    config = fusion.TrainConfig(epochs=1, batch_size=16)
    comparisons = compare.run_targets(
        data,
        tiny_ds,
        None,
        ["concat"],
        seeds=[0],
        config=config,
        hidden=8,
        log=False,
        progress=None,
        workers=1,
    )
    assert list(comparisons) == ["match"]
    assert {"test_accuracy_without_image", "test_accuracy_without_text"} <= set(
        comparisons["match"].runs.columns
    )
    with pytest.raises(ValueError, match="are for the label task"):
        compare.run_targets(data, tiny_ds, ["motion"], ["concat"])


def test_modality_dropout_is_an_option_of_the_methods_that_take_it():
    choices = compare.expand(
        ["concat", "grid_cross_attention", "late:modality_dropout=0.1"], ["image", "text"]
    )
    chosen = {c.label: dict(c.options) for c in compare.with_modality_dropout(choices, 0.3)}
    assert chosen == {
        "concat": {"modality_dropout": 0.3},
        "grid_cross_attention": {},  # a token method of image and text: no missing token
        "late:modality_dropout=0.1": {"modality_dropout": 0.1},
    }
    assert compare.with_modality_dropout(choices, 0.0) == choices


def test_pooled_methods_take_their_own_epoch_budget(data):
    config = fusion.TrainConfig(epochs=3, batch_size=16, patience=3)
    result = compare.run(
        data,
        ["concat", "grid_cross_attention"],
        seeds=[0],
        config=config,
        hidden=8,
        log=False,
        progress=None,
        pooled_epochs=1,
    )
    epochs = result.runs.set_index("method")["epochs_run"]
    assert epochs["concat"] == 1 and epochs["grid_cross_attention"] == 3


def test_tuned_settings_replace_the_shared_ones_for_their_method_alone(data, tmp_path):
    from mmlab.fusion import tuned

    path = tmp_path / "tuned.yaml"
    path.write_text(
        "entries:\n"
        "  concat:\n"
        "    parameters: {lr: 0.01, weight_decay: 0.0, hidden: 12, dropout: 0.0, pooled_epochs: 2}\n"
        "    search: {parent_run_id: abc, metric: val_accuracy, value: 0.6}\n"
    )
    settings = tuned.load(path)
    assert settings == {
        "concat": {
            "lr": 0.01,
            "weight_decay": 0.0,
            "hidden": 12,
            "dropout": 0.0,
            "pooled_epochs": 2,
        }
    }
    config = fusion.TrainConfig(epochs=3, batch_size=16, patience=5, warmup=1 / 3)
    quiet = dict(seeds=[0], hidden=8, log=False, progress=None, workers=1, dropout=0.2)
    result = compare.run(data, ["concat", "late"], config=config, tuned=settings, **quiet)
    runs = result.runs.set_index("method")
    assert runs.loc["concat", "epochs_run"] == 2 and runs.loc["late", "epochs_run"] == 3
    # the widths the models were built with: 12 from the file, 8 shared
    assert runs.loc["concat", "n_parameters"] == parameter_count("concat", data, 12)
    assert runs.loc["late", "n_parameters"] == parameter_count("late", data, 8)
    shared = compare.Recipe(config, 8, 0.2)
    recipe = shared.tuned("pooled", settings["concat"])
    assert (recipe.config.lr, recipe.config.weight_decay, recipe.hidden) == (0.01, 0.0, 12)
    assert recipe.dropout == 0.0 and recipe.is_tuned and not shared.tuned("pooled", {}).is_tuned
    assert recipe.config.epochs == 2 and recipe.config.patience == 2
    assert shared.tuned("tokens", {"pooled_epochs": 2}).config.epochs == 3  # pooled only
    # a warmup keeps its length in epochs: one of three shared epochs is one of six
    assert shared.tuned("pooled", {"pooled_epochs": 6}).config.warmup == pytest.approx(1 / 6)


def parameter_count(name, data, hidden):
    return fusion.parameter_count(fusion.create(name, data.specs["pooled"], hidden=hidden))


def test_a_settings_file_notebook_02_cannot_use_is_refused_by_file_method_and_key(tmp_path):
    from mmlab.fusion import tuned

    path = tmp_path / "tuned.yaml"
    path.write_text("entries:\n  concat:\n    parameters: {lr: 0.01, width: 3}\n")
    with pytest.raises(ValueError, match=r"tuned.yaml: entry 'concat': 'width' is not a per-m"):
        tuned.load(path)
    path.write_text("entries:\n  gated:\n    parameters: {hidden: 1.5}\n")
    with pytest.raises(ValueError, match="entry 'gated': hidden must be a whole number"):
        tuned.load(path)
    path.write_text("methods: {}\n")
    with pytest.raises(ValueError, match="expected a mapping 'entries"):
        tuned.load(path)
    with pytest.raises(FileNotFoundError, match="mmlab run params/full.yaml"):
        tuned.load(tmp_path / "absent.yaml")


def test_dropout_reaches_every_method_unless_its_options_set_one(data):
    for label, p in (("concat", 0.3), ("concat:dropout=0.05", 0.05), ("grid_cross_attention", 0.3)):
        model = compare.build(data, compare.expand([label], data.modalities)[0], 8, dropout=0.3)
        rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        assert rates <= {p, 0.0} and p in rates, (label, rates)  # 0: layers that never drop
    default = compare.build(data, compare.expand(["concat"], data.modalities)[0], 8)
    assert {m.p for m in default.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
