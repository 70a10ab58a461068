"""The attribute checker: a small grid detector, trained on real images of the embedded world,
that reads what a (generated) image shows: each object's shape, colour and centre, hence the
count and the relations between objects. It is the in-domain judge of faithfulness (CLIP and
Inception are out of domain here and cannot be downloaded).

    checker = train_checker(ds, CheckerConfig(image_size=64)).checker   # or checker_for(ds, ...)
    checker.read(images)      # list (per image) of [{shape, colour, x, y, score}], x, y in [0, 1]
    checker.features(images)  # [N, D] float: pooled trunk features, for Frechet distances
    checker.feature_module()  # the same as an nn.Module with `num_features` (torchmetrics)
    evaluate_checker(checker, ds["test"])   # per-attribute accuracy on real images
    checker.save(folder); AttributeChecker.load(folder)   # weights.pt (a state dict) + config.json

`images`: a float tensor [N, 3, H, W] in [0, 1], a uint8 tensor [N, 3, H, W], or PIL images;
any size (resized to `config.image_size`). The design is a one-stage detector in the manner of
YOLO (Redmon et al. 2016): a CNN maps the image to a `grid` x `grid` map whose cells each say
whether an object's centre falls in it (objectness), which shape and colour it has, and where
in the cell the centre lies. Cells are smaller than the distance between two objects' centres
in the world's layout, so one cell holds at most one object. Training goes through the
workspace's one loop (`mmlab.train.loop.fit`) on left-right flipped and slightly shifted real
images; the epoch kept is the one with the best validation share of images read exactly right,
and the objectness threshold is then calibrated on the same validation images."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from mmlab.data import world_of
from mmlab.train import loop

MAX_OBJECTS = 8  # object slots per training image (the embedded world has at most 3)
NORM_MEAN, NORM_STD = 0.5, 0.25
MERGE = 0.75  # cells: detections closer than this are one object
THRESHOLDS = (0.05, 0.1, 0.15, 0.25, 0.35, 0.5)  # the objectness thresholds `calibrate` tries


@dataclass
class CheckerConfig:
    image_size: int = 64  # the generators' resolution; images are resized to it
    grid: int = 8  # cells per side of the detection map
    width: int = 32  # channels of the first stage (doubled at each of the next two)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 4
    warmup: float = 0.1
    flip: bool = True  # mirror training images left-right (every shape is symmetric so)
    # move training images by up to this share of the side (edges replicated): the world puts
    # objects near the centres of a 3x3 layout, a generator anywhere
    shift: float = 0.08
    # objectness above which a cell holds an object: low, because an object centred on the line
    # between two cells splits its objectness between them (the duplicate is then dropped)
    threshold: float = 0.25
    calibrate: bool = True  # after training, pick the threshold of `THRESHOLDS` best on validation
    seed: int = 0
    device: str = "cpu"
    shapes: tuple[str, ...] = ()  # class names, filled from the dataset's world when empty
    colours: tuple[str, ...] = ()

    def __post_init__(self):
        self.shapes, self.colours = tuple(self.shapes), tuple(self.colours)
        side = self.image_size // self.grid
        if self.image_size % self.grid or side < 1 or side & (side - 1):
            raise ValueError(
                f"image_size ({self.image_size}) must be grid ({self.grid}) times a power of two, "
                f"e.g. 32 or 64 with grid 8"
            )

    def identity(self) -> str:
        """A short hash of everything that changes the trained checker."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class AttributeChecker(nn.Module):
    """The detector (see the module docstring). `forward(x)`: normalised images -> the map
    [N, 1 + shapes + colours + 2, grid, grid] of raw outputs."""

    def __init__(self, config: CheckerConfig):
        super().__init__()
        if not config.shapes or not config.colours:
            raise ValueError("CheckerConfig needs the class names: shapes=(...), colours=(...)")
        self.config = config
        downs = int(math.log2(config.image_size // config.grid))
        n_stages = max(3, downs)
        widths = [config.width * 2 ** min(i, 2) for i in range(n_stages)]
        stages, c_in = [], 3
        for i, w in enumerate(widths):
            # small images keep their full resolution in the first stages: a small object
            # is a few pixels wide at 32x32
            stages.append(_block(c_in, w, 2 if i >= n_stages - downs else 1))
            c_in = w
        self.trunk = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, 1 + len(config.shapes) + len(config.colours) + 2, 1),
        )
        self.num_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    # ------------------------------------------------------------------ images in
    def pixels(self, images) -> torch.Tensor:
        """Any accepted image batch -> normalised float [N, 3, S, S] on the model's device."""
        x = to_unit(images)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return ((x - NORM_MEAN) / NORM_STD).to(next(self.parameters()).device)

    @torch.inference_mode()
    def outputs(self, images, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        x = self.pixels(images)
        return torch.cat([self(chunk) for chunk in x.split(batch_size)]).float().cpu()

    @torch.inference_mode()
    def features(self, images, batch_size: int = 256) -> torch.Tensor:
        """[N, D] pooled trunk features (D = `num_features`): what Frechet distances compare."""
        self.eval()
        x = self.pixels(images)
        return torch.cat([self.trunk(c).mean(dim=(2, 3)) for c in x.split(batch_size)]).cpu()

    def feature_module(self) -> nn.Module:
        """`features` as a module for torchmetrics' FID / KID (`feature=`, `normalize=True`)."""
        return _Features(self)

    def read(self, images, batch_size: int = 256) -> list[list[dict]]:
        """The objects each image shows: [{shape, colour, x, y, score}] left to right."""
        return decode(self.outputs(images, batch_size), self.config)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """`weights.pt` (a state dict of tensors) and `config.json` in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save(state, folder / "weights.pt")
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AttributeChecker:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json: not a saved attribute checker")
        config = CheckerConfig(**json.loads((folder / "config.json").read_text()))
        model = cls(config)
        model.load_state_dict(
            torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        )
        return model.eval()


class _Features(nn.Module):
    def __init__(self, checker: AttributeChecker):
        super().__init__()
        self.checker = checker
        self.num_features = checker.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.checker.features(images)


def to_unit(images) -> torch.Tensor:
    """PIL images, uint8 or float [0, 1] tensors [N, 3, H, W] -> float [N, 3, H, W] in [0, 1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images as [N, 3, H, W], got shape {list(images.shape)}")
        if images.dtype == torch.uint8:
            return images.float() / 255
        return images.float().clamp(0, 1)
    images = list(images)
    if not all(isinstance(im, Image.Image) for im in images):
        kinds = sorted({type(im).__name__ for im in images})
        raise TypeError(f"expected PIL images or an [N, 3, H, W] tensor, got {kinds}")
    sizes = {im.size for im in images}
    side = max(max(s) for s in sizes) if sizes else 1
    tensors = [TF.pil_to_tensor(im.convert("RGB")) for im in images]
    tensors = [
        t if t.shape[1:] == (side, side) else TF.resize(t, [side, side], antialias=True)
        for t in tensors
    ]
    return torch.stack(tensors).float() / 255 if tensors else torch.zeros(0, 3, side, side)


# ---------------------------------------------------------------------- targets and decoding
def decode(out: torch.Tensor, config: CheckerConfig) -> list[list[dict]]:
    """Raw maps [N, K, G, G] -> objects per image: cells above the threshold, a cell dropped
    when a stronger one's centre is closer than `MERGE` cells (one object seen twice; two objects
    of the world's layout are farther apart)."""
    n_s = len(config.shapes)
    g = out.shape[-1]
    objectness = out[:, 0].sigmoid()
    shape = out[:, 1 : 1 + n_s].argmax(1)
    colour = out[:, 1 + n_s : -2].argmax(1)
    offset = out[:, -2:].sigmoid()
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    xs, ys = (cols + offset[:, 0]) / g, (rows + offset[:, 1]) / g
    found = []
    for b in range(out.shape[0]):
        cells = (objectness[b] > config.threshold).nonzero().tolist()
        cells.sort(key=lambda rc: -float(objectness[b, rc[0], rc[1]]))
        kept: list[dict] = []
        for r, c in cells:
            x, y = float(xs[b, r, c]), float(ys[b, r, c])
            if any(math.hypot(x - k["x"], y - k["y"]) < MERGE / g for k in kept):
                continue
            kept.append(
                {
                    "shape": config.shapes[int(shape[b, r, c])],
                    "colour": config.colours[int(colour[b, r, c])],
                    "x": round(x, 3),
                    "y": round(y, 3),
                    "score": round(float(objectness[b, r, c]), 3),
                }
            )
        found.append(sorted(kept, key=lambda o: (o["x"], o["y"])))
    return found


def object_table(scenes: Sequence[Sequence[dict]], config: CheckerConfig) -> torch.Tensor:
    """Scenes -> [N, MAX_OBJECTS, 5] float: (present, x, y, shape index, colour index)."""
    table = torch.zeros(len(scenes), MAX_OBJECTS, 5)
    for i, scene in enumerate(scenes):
        if len(scene) > MAX_OBJECTS:
            raise ValueError(f"scene {i} has {len(scene)} objects; the checker reads {MAX_OBJECTS}")
        for j, o in enumerate(scene):
            s, c = config.shapes.index(o["shape"]), config.colours.index(o["colour"])
            table[i, j] = torch.tensor([1.0, o["x"], o["y"], s, c])
    return table


def targets(table: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    """Per-cell targets of a batch of object tables: objectness [B, G, G], and for the cells
    holding an object (`cell`: flat indices) its shape, colour and offset in the cell."""
    present = table[..., 0] > 0
    b, _ = present.nonzero(as_tuple=True)
    objs = table[present]
    cx, cy = objs[:, 1] * g, objs[:, 2] * g
    col = cx.floor().clamp(0, g - 1)
    row = cy.floor().clamp(0, g - 1)
    cell = b * g * g + (row * g + col).long()
    objectness = torch.zeros(table.shape[0] * g * g)
    objectness[cell] = 1.0
    return {
        "objectness": objectness.view(-1, g, g),
        "cell": cell,
        "shape": objs[:, 3].long(),
        "colour": objs[:, 4].long(),
        "offset": torch.stack([cx - col, cy - row], 1).clamp(0, 1),
    }


def detection_loss(out: torch.Tensor, target: dict[str, torch.Tensor], n_shapes: int):
    """Objectness BCE over all cells + shape and colour CE + offset MSE at the object cells."""
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).float()
    obj = F.binary_cross_entropy_with_logits(flat[:, 0], target["objectness"].view(-1))
    at = flat[target["cell"]]
    if len(at) == 0:
        return obj
    shape = F.cross_entropy(at[:, 1 : 1 + n_shapes], target["shape"])
    colour = F.cross_entropy(at[:, 1 + n_shapes : -2], target["colour"])
    offset = F.mse_loss(at[:, -2:].sigmoid(), target["offset"])
    return obj * 4 + shape + colour + offset * 4


# ---------------------------------------------------------------------- real images
def split_pixels(split, image_size: int) -> torch.Tensor:
    """A split's images as uint8 [N, 3, S, S] (resized to the checker's resolution)."""
    out = torch.empty(len(split), 3, image_size, image_size, dtype=torch.uint8)
    for i, image in enumerate(split["image"]):
        t = TF.pil_to_tensor(image.convert("RGB"))
        if t.shape[1:] != (image_size, image_size):
            t = TF.resize(t, [image_size, image_size], antialias=True)
        out[i] = t
    return out


def _scenes(split) -> list[list[dict]]:
    world = world_of(split)
    if not world.knows_scenes:
        world.kinds()  # raises SceneTruthUnknown: the checker learns from known scenes only
    return world.scenes(split)


# ---------------------------------------------------------------------- accuracy
def reading_accuracy(read: Sequence[Sequence[dict]], truth: Sequence[Sequence[dict]], world=None):
    """Per-attribute accuracy of readings against true scenes: `count` (right number of
    objects), `shape` and `colour` (of each true object, matched to the nearest read centre
    within a third of the image), `objects` (the set of (colour, shape) exactly right),
    `relation` (of the first two true objects, on scenes of two or more, from the read
    centres of the objects with their looks) and `exact` (count, looks and every relation)."""
    from mmlab.data import synthetic_world

    world = world or synthetic_world()
    hits: dict[str, list[bool]] = {k: [] for k in ("count", "shape", "colour", "objects")}
    hits |= {"relation": [], "exact": []}
    for seen, true in zip(read, truth, strict=True):
        hits["count"].append(len(seen) == len(true))
        for o in true:
            near = min(
                seen, key=lambda s: math.hypot(s["x"] - o["x"], s["y"] - o["y"]), default=None
            )
            close = near is not None and math.hypot(near["x"] - o["x"], near["y"] - o["y"]) < 1 / 3
            hits["shape"].append(close and near["shape"] == o["shape"])
            hits["colour"].append(close and near["colour"] == o["colour"])
        looks = {(s["colour"], s["shape"]): s for s in seen}
        right = sorted(looks) == sorted((o["colour"], o["shape"]) for o in true) and len(
            seen
        ) == len(true)
        hits["objects"].append(right)
        relations_right = True
        for a, b in zip(true, true[1:], strict=False):
            la, lb = looks.get((a["colour"], a["shape"])), looks.get((b["colour"], b["shape"]))
            ok = (
                la is not None and lb is not None and world.relation(la, lb) == world.relation(a, b)
            )
            if a is true[0]:
                hits["relation"].append(ok)
            relations_right &= ok
        hits["exact"].append(right and relations_right)
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def evaluate_checker(checker: AttributeChecker, split) -> dict[str, float]:
    """`reading_accuracy` of the checker on a split of real images with known scenes."""
    read = checker.read(split_pixels(split, checker.config.image_size))
    return reading_accuracy(read, _scenes(split), world_of(split))


# ---------------------------------------------------------------------- training
@dataclass
class CheckerFit:
    checker: AttributeChecker
    history: pd.DataFrame
    best_epoch: int
    cpu_seconds: float  # process CPU time (all threads): loading the images and training
    val: dict[str, float] = field(default_factory=dict)


def train_checker(
    ds, config: CheckerConfig | None = None, on_epoch: Callable[[int, dict], None] | None = None
) -> CheckerFit:
    """Train a checker on `ds["train"]` (real images of the embedded world), keeping the epoch
    with the best validation `exact` reading on `ds["validation"]`."""
    config = config or CheckerConfig()
    world = world_of(ds)
    kinds = world.kinds()  # SceneTruthUnknown on captions-only data, naming why
    if not config.shapes or not config.colours:
        config = CheckerConfig(
            **{**asdict(config), "shapes": kinds.shapes, "colours": kinds.colours}
        )
    for name in ("train", "validation"):
        if name not in ds:
            raise KeyError(
                f"training the checker needs a {name!r} split; the dataset has {list(ds)}"
            )
    started = time.process_time()
    data = {
        name: (split_pixels(ds[name], config.image_size), _scenes(ds[name]))
        for name in ("train", "validation")
    }
    torch.manual_seed(config.seed)
    model = AttributeChecker(config)
    recipe = loop.LoopConfig.of(
        config, monitor="val_exact", schedule=loop.ONE_CYCLE, name="checker"
    )
    result = loop.fit(_study, model, (data, config), recipe, on_epoch)
    model.cpu().eval()
    history = pd.DataFrame(result.history)
    best = history.loc[history["epoch"] == result.best_epoch].iloc[0]
    val = {k[4:]: float(v) for k, v in best.items() if k.startswith("val_")}
    if config.calibrate:
        val = calibrate(model, *data["validation"])
    return CheckerFit(model, history, result.best_epoch, time.process_time() - started, val)


def calibrate(model: AttributeChecker, pixels: torch.Tensor, scenes) -> dict[str, float]:
    """Set the objectness threshold to the one of `THRESHOLDS` with the best `exact` reading of
    the validation images (on a tie the higher: fewer phantom objects in generated images);
    returns that threshold's validation accuracy."""
    out = model.outputs(pixels)
    best: tuple[float, float, dict] | None = None
    for threshold in THRESHOLDS:
        config = replace(model.config, threshold=threshold)
        scores = reading_accuracy(decode(out, config), scenes)
        if best is None or scores["exact"] >= best[0]:
            best = (scores["exact"], threshold, scores)
    model.config = replace(model.config, threshold=best[1])
    return best[2]


def _study(model: AttributeChecker, data: dict, config: CheckerConfig) -> loop.Study:
    pixels, scenes = data["train"]
    table = object_table(scenes, config)
    val_pixels, val_scenes = data["validation"]
    g, n_s = config.grid, len(config.shapes)

    def batches(generator, group):
        order = torch.randperm(len(pixels), generator=generator)
        for idx in order.split(config.batch_size):
            x = pixels[idx].float() / 255
            objs = table[idx].clone()
            if config.flip:
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x[flip] = x[flip].flip(-1)
                objs[flip, :, 1] = 1 - objs[flip, :, 1]
            if config.shift:
                x, objs = _shifted(x, objs, config.shift, generator)
            x = ((x - NORM_MEAN) / NORM_STD).to(group.device)
            yield x, {k: v.to(group.device) for k, v in targets(objs, g).items()}

    def forward(net, batch):
        return net(batch[0])

    def loss(outputs, batch):
        value = detection_loss(outputs, batch[1], n_s)
        one = torch.ones((), dtype=torch.float64, device=value.device)
        return value, torch.stack([value.detach().double(), one])

    def summarise(sums):
        return {"loss": float(sums[0] / sums[1])}

    def validate(device):
        model.eval()
        read = model.read(val_pixels)
        model.train()
        return {f"val_{k}": v for k, v in reading_accuracy(read, val_scenes).items()}

    return loop.Study(
        model,
        batches,
        forward,
        loss,
        summarise,
        validate,
        steps_per_epoch=max(1, -(-len(pixels) // config.batch_size)),
    )


def _shifted(x: torch.Tensor, objs: torch.Tensor, share: float, generator):
    """Each image moved by whole pixels, up to `share` of its side, its objects with it (one
    whose centre leaves the image is dropped)."""
    side = x.shape[-1]
    most = max(1, round(share * side))
    moves = torch.randint(-most, most + 1, (len(x), 2), generator=generator)
    padded = F.pad(x, (most, most, most, most), mode="replicate")
    out = torch.empty_like(x)
    for i, (dx, dy) in enumerate(moves.tolist()):
        out[i] = padded[i, :, most - dy : most - dy + side, most - dx : most - dx + side]
    objs = objs.clone()
    objs[..., 1] += moves[:, None, 0] / side
    objs[..., 2] += moves[:, None, 1] / side
    inside = ((objs[..., 1:3] >= 0) & (objs[..., 1:3] < 1)).all(-1)
    objs[..., 0] *= inside
    return out, objs


def checker_for(ds, config: CheckerConfig | None = None, on_epoch=None) -> AttributeChecker:
    """The checker of `ds` and `config`, trained once and cached under the workspace's cache
    (keyed by the dataset's fingerprint and the config)."""
    from mmlab.core import workspace
    from mmlab.data import fingerprint

    config = config or CheckerConfig()
    folder = workspace.cache_dir() / "checker" / f"{fingerprint(ds)[:16]}-{config.identity()}"
    if (folder / "config.json").is_file():
        return AttributeChecker.load(folder)
    fit = train_checker(ds, config, on_epoch)
    try:  # a checker another process cached meanwhile stays: it may be loading from it
        with workspace.atomic_path(folder, replace=False) as tmp:
            fit.checker.save(tmp)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    return fit.checker
