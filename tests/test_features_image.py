"""Image extractors: the registry's face, shapes of pooled vectors and grids, weights loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import mmlab.features as F
from mmlab.features import image as image_mod


def scene(colour: str, shape: str = "circle", side: int = 96) -> Image.Image:
    im = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(im)
    box = (side // 4, side // 4, 3 * side // 4, 3 * side // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return im


IMAGES = [scene(c, s) for c in ("red", "blue", "green") for s in ("circle", "square")]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="efficientnet_lite0.*resnet18|resnet18.*small_cnn"):
        F.create("image", "resnet9000")
    with pytest.raises(KeyError, match="audio, video|image, text"):
        F.create("smell", "nose")
    assert {"efficientnet_lite0", "small_cnn", "resnet18", "vgg16"} <= set(F.available("image"))
    assert set(F.available()) == {"image", "text", "audio", "video"}


@pytest.mark.parametrize(
    ("kind", "layer", "shape"),
    [
        ("pooled", "last", (1280,)),
        ("grid", "last", (1280, 4, 4)),
        ("grid", "mid", (112, 8, 8)),
        ("pooled", "mid", (112,)),
    ],
)
def test_lite0_pooled_and_grids_at_128(kind, layer, shape):
    ex = F.create("image", "efficientnet_lite0", image_size=128, kind=kind, layer=layer)
    out = ex.extract(IMAGES, batch_size=4)
    assert out.shape == (len(IMAGES), *shape)
    assert ex.kind == kind and ex.dim == shape[0]
    assert torch.isfinite(out).all()
    assert ex.identity["layer"] == layer and ex.identity["image_size"] == 128


def placed(left: bool, side: int = 128) -> Image.Image:
    """A red circle in the left or right half of a white image."""
    im = Image.new("RGB", (side, side), "white")
    x = side // 8 if left else 5 * side // 8
    ImageDraw.Draw(im).ellipse((x, side // 3, x + side // 4, side // 3 + side // 4), fill="red")
    return im


def test_lite0_pyramid_is_the_pooled_vector_and_its_quadrants():
    kw = {"image_size": 128, "layer": "mid"}
    pyramid = F.create("image", "efficientnet_lite0", kind="pyramid", **kw)
    grid = F.create("image", "efficientnet_lite0", kind="grid", **kw).extract(IMAGES)
    out = pyramid.extract(IMAGES)
    assert out.shape == (len(IMAGES), 5 * 112) and pyramid.dim == 5 * 112
    torch.testing.assert_close(out[:, :112], grid.mean(dim=(2, 3)))
    top_left = grid[:, :, :4, :4].mean(dim=(2, 3))
    torch.testing.assert_close(out[:, 112:].view(-1, 112, 4)[:, :, 0], top_left)
    # It keeps where things are: the same object left and right differ more than when pooled.
    sides = pyramid.extract([placed(left=True), placed(left=False)])
    gap = lambda x: float((x[0] - x[1]).norm() / x.norm(dim=1).mean())  # noqa: E731
    assert gap(sides[:, 112:]) > 3 * gap(sides[:, :112])


def test_lite0_loads_the_offline_imagenet_weights():
    ex = F.create("image", "efficientnet_lite0", image_size=64)
    state = torch.load(image_mod.lite0_weights_path(), map_location="cpu", weights_only=True)
    stem = ex.module[0].conv.weight
    assert torch.equal(stem.cpu().contiguous(), state["_conv_stem.weight"])
    assert ex.identity["weights"] == "imagenet"


def test_pretrained_features_tell_colours_apart():
    ex = F.create("image", "efficientnet_lite0", image_size=96)
    out = torch.nn.functional.normalize(ex.extract([scene("red"), scene("red"), scene("blue")]))
    same, different = out[0] @ out[1], out[0] @ out[2]
    assert same > 0.999 and different < same - 1e-3


def test_batched_equals_one_at_a_time():
    ex = F.create("image", "resnet18", image_size=64, kind="grid", layer="mid")
    batched = ex.extract(IMAGES, batch_size=6)
    single = ex.extract(IMAGES, batch_size=1)
    assert batched.shape == (6, 256, 4, 4)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_channels_last_changes_speed_not_results():
    a = F.create("image", "small_cnn", image_size=64, channels_last=True).extract(IMAGES)
    b = F.create("image", "small_cnn", image_size=64, channels_last=False).extract(IMAGES)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_building_and_extracting_leave_the_global_rng_alone():
    """What a notebook trains after extracting must not depend on whether the feature cache
    was warm (a cold cache extracts, a warm one does not)."""
    state = torch.random.get_rng_state()
    F.create("image", "small_cnn", image_size=64).extract(IMAGES, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_small_cnn_is_seeded_and_loads_a_state_dict(tmp_path):
    one = F.create("image", "small_cnn", image_size=64, seed=3)
    again = F.create("image", "small_cnn", image_size=64, seed=3)
    other = F.create("image", "small_cnn", image_size=64, seed=4)
    assert torch.equal(one.extract(IMAGES), again.extract(IMAGES))
    assert not torch.allclose(one.extract(IMAGES), other.extract(IMAGES))
    path = tmp_path / "small.pth"
    torch.save(one.module.state_dict(), path)
    loaded = F.create("image", "small_cnn", image_size=64, seed=4, weights=str(path))
    torch.testing.assert_close(loaded.extract(IMAGES), one.extract(IMAGES))
    assert len(loaded.identity["weights_sha256"]) == 16


def test_torchvision_cnn_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "mnv3.pth"
    torch.save(model.state_dict(), path)
    ex = F.create("image", "mobilenet_v3_small", weights=str(path), image_size=64)
    x = torch.stack([ex.preprocess(im) for im in IMAGES[:2]])
    expected = model.eval().features(ex.normalize(x).contiguous()).mean(dim=(2, 3))
    torch.testing.assert_close(ex.extract(IMAGES[:2]), expected, rtol=1e-4, atol=1e-4)


def test_torchvision_weights_offline_say_a_network_or_cache_is_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: no network
    with pytest.raises(RuntimeError, match="network or a warm cache") as err:
        F.create("image", "resnet18", weights="IMAGENET1K_V1")
    assert "resnet18-f37072fd.pth" in str(err.value)


def test_bad_options_and_items_are_named(tmp_path):
    with pytest.raises(ValueError, match="kind='sequence'"):
        F.create("image", "small_cnn", kind="sequence")
    with pytest.raises(ValueError, match="layer='first'"):
        F.create("image", "small_cnn", layer="first")
    with pytest.raises(KeyError, match="IMAGENET1K_V1"):
        F.create("image", "resnet18", weights="IMAGENET_WRONG")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        F.create("image", "small_cnn", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(TypeError, match="PIL image"):
        F.create("image", "small_cnn", image_size=32).extract([np.zeros((8, 8, 3))])


def test_lite0_trunk_matches_the_reference_network():
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=96)
    net.load_state_dict(image_mod.load_state_dict(image_mod.lite0_weights_path()))
    ex = F.create("image", "efficientnet_lite0", image_size=96, kind="grid")
    x = torch.stack([ex.preprocess(im) for im in IMAGES[:3]])
    with torch.inference_mode():
        expected = net.eval().extract_features(ex.normalize(x).contiguous())
    torch.testing.assert_close(ex.extract(IMAGES[:3]), expected, rtol=1e-4, atol=1e-4)


def test_folded_batchnorms_leave_outputs_and_the_trainable_module_alone():
    ex = F.create("image", "small_cnn", image_size=64, kind="grid")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ex.inference.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ex.module.modules())
    x = torch.stack([ex.preprocess(im) for im in IMAGES])
    with torch.inference_mode():
        reference = ex.module(ex.normalize(x).contiguous())
    torch.testing.assert_close(ex.extract(IMAGES), reference, rtol=1e-4, atol=1e-4)
