"""Loaders: imagefolder, Karpathy, COCO and the embedded dataset give one schema; bad input
gives clear errors; the content fingerprint is stable."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image

from mmlab.data import DataError, fingerprint, load_dataset, synthetic

CAPTIONS = {
    "img0": ["a red circle", "a crimson disc on a background"],
    "img1": ["a blue square above a green cross", "there is a blue box"],
    "img2": ["a yellow triangle", "a lemon wedge"],
    "img3": ["a purple diamond left of an orange circle", "a violet rhombus"],
}
SPLITS = {"img0": "train", "img1": "train", "img2": "val", "img3": "test"}
SPLIT_NAME = {"train": "train", "val": "validation", "test": "test"}


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), (shade, 255 - shade, 90)).save(path)


@pytest.fixture()
def images(tmp_path) -> Path:
    """A folder of four small images named like COCO's (`images/imgN.jpg`)."""
    root = tmp_path / "raw" / "images"
    for i, name in enumerate(CAPTIONS):
        _image(root / f"{name}.png", 40 * i)
    return root


def _imagefolder_jsonl(images: Path, out: Path) -> Path:
    for name, split in SPLITS.items():
        target = out / SPLIT_NAME[split]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(images / f"{name}.png", target / f"{name}.png")
        with open(target / "metadata.jsonl", "a") as f:
            f.write(json.dumps({"file_name": f"{name}.png", "captions": CAPTIONS[name]}) + "\n")
    return out


def _imagefolder_csv(images: Path, out: Path) -> Path:
    """One metadata.csv at the root, a `split` column and one caption per row as `text`
    (a JSON list in the cell, as pandas writes lists)."""
    (out / "pics").mkdir(parents=True)
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text", "split", "id"])
        for name, split in SPLITS.items():
            shutil.copy(images / f"{name}.png", out / "pics" / f"{name}.png")
            writer.writerow([f"pics/{name}.png", json.dumps(CAPTIONS[name]), split, name])
    return out


def _karpathy(images: Path, out: Path) -> Path:
    entries = [
        {
            "filepath": "images",
            "filename": f"{name}.png",
            "imgid": i,
            "split": "restval" if name == "img1" else SPLITS[name],
            "sentences": [{"raw": c, "tokens": c.split()} for c in CAPTIONS[name]],
        }
        for i, name in enumerate(CAPTIONS)
    ]
    out.write_text(json.dumps({"dataset": "coco", "images": entries}))
    return out


def _coco(images: Path, out: Path, names) -> Path:
    data = {
        "images": [
            {"id": i, "file_name": f"{n}.png"} for i, n in enumerate(CAPTIONS) if n in names
        ],
        "annotations": [
            {"id": 100 * i + j, "image_id": i, "caption": c}
            for i, n in enumerate(CAPTIONS)
            if n in names
            for j, c in enumerate(CAPTIONS[n])
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out


def _by_image(ds_dict) -> dict[str, tuple[str, list[str]]]:
    """{image file stem: (split, captions)} over all splits."""
    out = {}
    for split, ds in ds_dict.items():
        paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
        for p, caps in zip(paths, ds["captions"], strict=True):
            out[Path(p["path"]).stem] = (split, caps)
    return out


def _check_schema(ds_dict, splits=("train", "validation", "test")) -> None:
    assert isinstance(ds_dict, datasets.DatasetDict)
    assert list(ds_dict) == list(splits)
    for ds in ds_dict.values():
        assert ds.column_names[:3] == ["id", "image", "captions"]
        assert ds.features["id"] == datasets.Value("string")
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["captions"] == datasets.List(datasets.Value("string"))
        row = ds[0]
        assert isinstance(row["image"], Image.Image) and row["image"].size == (24, 16)


def test_all_formats_give_the_same_schema_and_captions(images, tmp_path):
    expected = {n: (SPLIT_NAME[s], CAPTIONS[n]) for n, s in SPLITS.items()}
    jsonl = load_dataset(_imagefolder_jsonl(images, tmp_path / "jsonl"))
    table = load_dataset(_imagefolder_csv(images, tmp_path / "csv"))
    karpathy = load_dataset(_karpathy(images, tmp_path / "raw" / "dataset_coco.json"))
    for ds_dict in (jsonl, table, karpathy):
        _check_schema(ds_dict)
        assert _by_image(ds_dict) == expected
    assert table["train"]["id"] == ["img0", "img1"]  # the id column is kept
    assert jsonl["train"]["id"] == ["img0", "img1"]  # else the image file's stem
    assert karpathy["train"]["id"] == ["0", "1"]  # Karpathy's imgid


def test_coco_annotations_with_an_image_root(images, tmp_path):
    ann = _coco(images, tmp_path / "coco" / "annotations" / "captions_val2017.json", CAPTIONS)
    ds_dict = load_dataset(ann, image_root=images)
    _check_schema(ds_dict)  # one split in the file: cut 80/10/10 by image id
    assert {n: c for n, (_, c) in _by_image(ds_dict).items()} == CAPTIONS
    assert {s: len(d) for s, d in ds_dict.items()} == {"train": 2, "validation": 1, "test": 1}
    assert ds_dict.split_plan.made == ["train", "validation", "test"]
    assert sorted(i for d in ds_dict.values() for i in d["id"]) == ["0", "1", "2", "3"]


def test_coco_image_root_is_found_beside_the_annotations(images, tmp_path):
    ann = _coco(images, tmp_path / "coco" / "annotations" / "captions_train2017.json", CAPTIONS)
    shutil.copytree(images, tmp_path / "coco" / "train2017")
    ds_dict = load_dataset(ann)
    assert list(ds_dict) == ["train", "validation", "test"]
    assert sum(map(len, ds_dict.values())) == 4
    one = _coco(images, tmp_path / "one" / "annotations" / "captions_train2017.json", ["img0"])
    shutil.copytree(images, tmp_path / "one" / "train2017")
    with pytest.raises(ValueError, match=r"split 'train' has 1 image\(s\).*at least 4"):
        load_dataset(one)  # too few images to split
    lonely = _coco(images, tmp_path / "elsewhere" / "captions_val2014.json", ["img0"])
    with pytest.raises(DataError, match="image_root"):
        load_dataset(lonely)


def test_audio_paths_resolve_from_the_metadata_folder(images, tmp_path):
    """A root metadata.jsonl with a `split` column and `audio_path` relative to the root."""
    import wave

    root = tmp_path / "with_audio"
    (root / "pics").mkdir(parents=True)
    (root / "sounds").mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for name, split in SPLITS.items():
            shutil.copy(images / f"{name}.png", root / "pics" / f"{name}.png")
            with wave.open(str(root / "sounds" / f"{name}.wav"), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
                w.writeframes(b"\x01\x00" * 800)
            row = {"file_name": f"pics/{name}.png", "caption": CAPTIONS[name][0], "split": split}
            f.write(json.dumps({**row, "audio_path": f"sounds/{name}.wav", "label": 1}) + "\n")
    ds_dict = load_dataset(root)
    _check_schema(ds_dict)
    train = ds_dict["train"]
    assert train.column_names == ["id", "image", "captions", "audio", "label"]
    assert train["audio"] == [str(root / "sounds" / "img0.wav"), str(root / "sounds" / "img1.wav")]
    assert train["captions"] == [CAPTIONS["img0"][:1], CAPTIONS["img1"][:1]]


def test_synthetic_sources_read_the_embedded_dataset(tiny_synthetic):
    ds_dict = load_dataset(tiny_synthetic)
    assert {s: len(d) for s, d in ds_dict.items()} == {"train": 38, "validation": 5, "test": 5}
    train = ds_dict["train"]
    assert train.column_names[:5] == ["id", "image", "captions", "audio", "video"]
    for column in ("objects", "n_objects", "motion", "first_shape", "first_colour"):
        assert column in train.column_names
    for column in ("match_caption", "match_label", "match_kind"):
        assert column in train.column_names
    row = train[0]
    assert Path(row["audio"]).is_absolute() and Path(row["audio"]).is_file()
    assert Path(row["video"]).is_absolute() and Path(row["video"]).is_file()
    assert row["image"].size == (64, 64) and len(row["captions"]) == 5
    assert synthetic.scene_objects(row) == [
        (o["colour"], o["shape"], o["size"]) for o in row["objects"]
    ]


def test_synthetic_source_string_generates_under_the_workspace():
    ds_dict = load_dataset("synthetic:n=12,seed=3,image_size=32,audio=0,video=0")
    assert sum(len(d) for d in ds_dict.values()) == 12
    assert "audio" not in ds_dict["train"].column_names
    with pytest.raises(DataError, match="valid keys"):
        load_dataset("synthetic:n=12,colour=red")


def test_limit_keeps_the_first_rows_of_each_split(tiny_synthetic):
    ds_dict = load_dataset(tiny_synthetic, limit=3)
    assert {s: len(d) for s, d in ds_dict.items()} == {"train": 3, "validation": 3, "test": 3}
    assert ds_dict["train"]["id"] == load_dataset(tiny_synthetic)["train"]["id"][:3]


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_across_loads_copies_and_regeneration(tiny_synthetic, tmp_path):
    first = fingerprint(load_dataset(tiny_synthetic))
    assert len(first) == 32 and fingerprint(load_dataset(tiny_synthetic)) == first
    copy = shutil.copytree(tiny_synthetic, tmp_path / "copy")
    time.sleep(0.01)
    assert fingerprint(load_dataset(copy)) == first  # other place, other file times
    again = synthetic.generate(tmp_path / "again", n=48, seed=0, image_size=64)
    assert fingerprint(load_dataset(again)) == first


def test_fingerprint_changes_with_content(tiny_synthetic, tmp_path):
    base = fingerprint(load_dataset(tiny_synthetic))
    copy = shutil.copytree(tiny_synthetic, tmp_path / "copy")
    meta = copy / "test" / "metadata.jsonl"
    meta.write_text(meta.read_text().replace('"captions": ["', '"captions": ["x ', 1))
    assert fingerprint(load_dataset(copy)) != base
    copy2 = shutil.copytree(tiny_synthetic, tmp_path / "copy2")
    wav = next((copy2 / "validation" / "audio").glob("*.wav"))
    shutil.copy(next((copy2 / "train" / "audio").glob("*.wav")), wav)
    assert fingerprint(load_dataset(copy2)) != base


def test_fingerprint_of_a_derived_dataset_is_computed_and_remembered(tiny_synthetic):
    ds_dict = load_dataset(tiny_synthetic)
    subset = datasets.DatasetDict({"train": ds_dict["train"].select(range(5))})
    value = fingerprint(subset)
    assert value != fingerprint(ds_dict)
    assert fingerprint(datasets.DatasetDict({"train": ds_dict["train"].select(range(5))})) == value


# ----------------------------------------------------------------------------- bad input


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize("column", ["image", "audio", "video"])
def test_a_bad_file_is_named_or_skipped_and_counted(tiny_synthetic, tmp_path, column):
    copy = shutil.copytree(tiny_synthetic, tmp_path / "copy")
    rows = [json.loads(x) for x in (copy / "train" / "metadata.jsonl").read_text().splitlines()]
    key = "file_name" if column == "image" else column
    broken, missing = copy / "train" / rows[2][key], copy / "train" / rows[7][key]
    _corrupt(broken)
    missing.unlink()
    with pytest.raises(DataError) as error:
        load_dataset(copy)
    assert str(broken) in str(error.value) and "on_error='skip'" in str(error.value)
    ds_dict = load_dataset(copy, on_error="skip")
    report = ds_dict.load_report
    assert report.n_skipped == 2
    assert {p for _, p, _ in report.skipped} == {str(broken), str(missing)}
    assert any("not found" in reason for _, _, reason in report.skipped)
    assert len(ds_dict["train"]) == 36
    assert rows[2]["id"] not in ds_dict["train"]["id"]


def test_no_caption_column_lists_found_and_accepted_columns(images, tmp_path):
    out = tmp_path / "nocap" / "train"
    out.mkdir(parents=True)
    shutil.copy(images / "img0.png", out / "img0.png")
    (out / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "label": 3}) + "\n")
    with pytest.raises(DataError) as error:
        load_dataset(tmp_path / "nocap")
    message = str(error.value)
    assert "no caption column" in message and "label" in message and "sentences" in message


def test_folder_without_metadata_is_refused(images, tmp_path):
    with pytest.raises(DataError, match="metadata.jsonl"):
        load_dataset(images)


def test_missing_source_and_empty_split(tmp_path, images):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    folder = _imagefolder_jsonl(images, tmp_path / "ds")
    (folder / "test" / "metadata.jsonl").write_text("")
    with pytest.raises(DataError, match="split folder 'test' .* is empty"):
        load_dataset(folder)


def test_karpathy_file_without_images_is_refused(tmp_path):
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k"}))
    with pytest.raises(DataError, match="no 'images' list"):
        load_dataset(path)
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "train"}]}))
    with pytest.raises(DataError, match=r"images\[0\] lacks \['sentences'\]"):
        load_dataset(path)
    path.write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset(path)


def test_karpathy_missing_image_names_the_file(images, tmp_path):
    path = _karpathy(images, tmp_path / "raw" / "dataset_flickr30k.json")
    (images / "img0.png").unlink()
    with pytest.raises(DataError, match="img0.png"):
        load_dataset(path)
    ds_dict = load_dataset(path, on_error="skip")
    assert ds_dict["train"]["id"] == ["1"] and ds_dict.load_report.n_skipped == 1
    (images / "img2.png").unlink()  # the only validation image: nothing left to skip to
    with pytest.raises(DataError, match="every row of split 'validation'"):
        load_dataset(path, on_error="skip")


def test_bad_on_error_value():
    with pytest.raises(ValueError, match="on_error"):
        load_dataset("synthetic", on_error="ignore")


def test_hub_source_fails_at_once_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        load_dataset("hf:nlphuji/flickr30k")
    assert time.monotonic() - started < 5  # the point of the feature: no long hang
