"""Video encoders: mean of frame features, a 3D CNN (r3d_18), and a two-stream RGB + flow net.
Each item is a video path decoded with PyAV; `num_frames` evenly spaced frames are resized to
`image_size` in `preprocess`, so DataLoader workers decode while the network runs.
`frame_mean` averages an image encoder over frames (no time axis). `r3d_18` is torchvision's
3-D ResNet-18 to its global pool (512-d); without Kinetics weights (`weights=None`, default)
it is a seeded random init. `two_stream` pairs the frame encoder with a motion stream: a
signed histogram of optical-flow orientations weighted by magnitude (HOF, Laptev et al. 2008;
Farneback flow) over the frame and a `flow_grid` x `flow_grid` layout, plus the mean speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from mmlab.core.extras import require
from mmlab.features.base import Extractor, seeded
from mmlab.features.image import (
    file_digest,
    is_weights_path,
    load_state_dict,
    torchvision_state_dict,
)
from mmlab.features.registry import lookup, register

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# OpenCV's calcOpticalFlowFarneback arguments; they join two_stream's identity (cache key).
FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 9,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.1,
    "flags": 0,
}


def read_frames(path, num_frames: int, image_size: int) -> np.ndarray:
    """`num_frames` evenly spaced RGB frames, uint8 `[T, S, S, 3]`; short clips repeat the last."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            frames = [
                f.to_ndarray(format="rgb24", width=image_size, height=image_size)
                for f in container.decode(video=0)
            ]
    except av.error.FFmpegError as err:
        raise ValueError(f"video file {path} could not be decoded: {err}") from err
    if not frames:
        raise ValueError(f"video file {path} has no video frames")
    picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([frames[i] for i in picks])


def optical_flow(frames: np.ndarray) -> np.ndarray:
    """Farneback optical flow between consecutive frames, float32 `[T-1, S, S, 2]` (dx, dy in
    pixels; y points down): the mean of the flows of the L, a and b channels of CIELAB."""
    cv2 = require("cv2", "optical flow (the two_stream video encoder)")

    # Flow of the grey image alone misses objects as bright as their background; the colour
    # channels a and b still show their edges.
    lab = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2LAB) for f in frames]
    flows = []
    for prev, nxt in zip(lab[:-1], lab[1:], strict=True):
        per_channel = [
            cv2.calcOpticalFlowFarneback(
                np.ascontiguousarray(prev[..., c]),
                np.ascontiguousarray(nxt[..., c]),
                None,
                **FARNEBACK,
            )
            for c in range(3)
        ]
        flows.append(np.mean(per_channel, axis=0))
    return np.stack(flows).astype(np.float32)


def flow_histogram(flow: np.ndarray, bins: int = 8, grid: int = 2) -> np.ndarray:
    """HOF of `[T, H, W, 2]` flow summed over time, float32 `[flow_dim(bins, grid)]`: the whole
    frame's histogram then each cell's (row-major; none for `grid` 1) as fractions of the total
    magnitude, and last the mean speed in pixels per frame."""
    dx, dy = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(dx, dy)
    # Signed orientation over the full circle: abs or a half circle would merge left and right.
    position = (np.arctan2(dy, dx) % (2 * np.pi)) / (2 * np.pi) * bins
    low = np.floor(position).astype(np.int64)
    upper_weight = position - low  # soft assignment: a direction on a bin edge is not noise
    t, h, w = magnitude.shape
    cells = (np.arange(h)[:, None] * grid // h) * grid + np.arange(w)[None, :] * grid // w
    cells = np.broadcast_to(cells, (t, h, w))
    counts = np.zeros(grid * grid * bins)
    for index, weight in ((low % bins, 1 - upper_weight), ((low + 1) % bins, upper_weight)):
        counts += np.bincount(
            (cells * bins + index).ravel(),
            weights=(magnitude * weight).ravel(),
            minlength=grid * grid * bins,
        )
    counts = counts.reshape(grid * grid, bins)
    # Fractions, not sums: how far or how many objects move should not outweigh which way.
    total = max(float(counts.sum()), 1e-6)
    parts = [counts.sum(0) / total] + ([counts.ravel() / total] if grid > 1 else [])
    return np.concatenate([*parts, [magnitude.mean()]]).astype(np.float32)


def flow_dim(bins: int, grid: int) -> int:
    """Length of `flow_histogram(flow, bins, grid)`."""
    return bins * (1 + (grid * grid if grid > 1 else 0)) + 1


def _to_chw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, 3, S, S]


def _check_frames(name: str, num_frames: int, image_size: int, least: int = 1) -> None:
    if int(num_frames) < least:
        raise ValueError(f"{name}: num_frames={num_frames}; it needs at least {least}")
    if int(image_size) < 8:
        raise ValueError(f"{name}: image_size={image_size}; give at least 8 pixels")


class FrameMean(Extractor):
    """An image extractor applied to every frame, its vectors averaged over time."""

    modality = "video"
    kind = "pooled"
    default_batch_size = 16
    default_workers = 2
    least_frames = 1

    def __init__(self, name, frame_encoder, num_frames, image_size, device):
        super().__init__(device)
        _check_frames(name, num_frames, image_size, least=self.least_frames)
        self.name, self.num_frames, self.image_size = name, int(num_frames), int(image_size)
        self.frame = lookup("image", frame_encoder)(
            name=frame_encoder, image_size=self.image_size, kind="pooled", device=device
        )
        self.dim = self.frame.dim
        self.options = {
            "frame_encoder": self.frame.identity,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
        }

    def preprocess(self, item) -> torch.Tensor:
        return _to_chw(read_frames(item, self.num_frames, self.image_size))

    def _mean_over_time(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        return self.frame.forward(clips.flatten(0, 1)).view(b, t, -1).mean(1)

    def forward(self, batch) -> torch.Tensor:
        return self._mean_over_time(batch)


class TwoStream(FrameMean):
    """`FrameMean` on the RGB frames, then the flow histogram of the same frames."""

    least_frames = 2  # flow needs a pair

    def __init__(self, name, frame_encoder, num_frames, image_size, device, flow_bins, flow_grid):
        cv2 = require("cv2", "the two_stream video encoder")  # here, not in a DataLoader worker
        super().__init__(name, frame_encoder, num_frames, image_size, device)
        if int(flow_bins) < 4 or int(flow_grid) < 1:
            raise ValueError(
                f"{name}: flow_bins={flow_bins}, flow_grid={flow_grid}; give at least 4 "
                "orientation bins (fewer cannot tell four directions apart) and a grid of 1 or more"
            )
        self.flow_bins, self.flow_grid = int(flow_bins), int(flow_grid)
        self.dim = self.frame.dim + flow_dim(self.flow_bins, self.flow_grid)
        # Every setting of the flow stream, and OpenCV's release, changes the features.
        self.options.update(
            {
                "flow": "farneback-lab-hof",
                "farneback": FARNEBACK,
                "flow_bins": self.flow_bins,
                "flow_grid": self.flow_grid,
                "opencv": cv2.__version__,
            }
        )

    def preprocess(self, item):
        frames = read_frames(item, self.num_frames, self.image_size)
        motion = flow_histogram(optical_flow(frames), self.flow_bins, self.flow_grid)
        return _to_chw(frames), torch.from_numpy(motion)

    def collate(self, batch):
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])

    def forward(self, batch) -> torch.Tensor:
        rgb, motion = batch
        appearance = self._mean_over_time(rgb)
        return torch.cat([appearance, motion.to(appearance.device, appearance.dtype)], dim=1)


# One default for every video encoder, so notebooks 01 and 02 share cached features: the
# synthetic objects move a few pixels between four frames of 32 px, enough for optical flow,
# and r3d_18's cost grows with frames x side^2.
NUM_FRAMES, IMAGE_SIZE = 4, 32


@register("video", "frame_mean")
def frame_mean(
    name="frame_mean",
    frame_encoder="efficientnet_lite0",
    num_frames=NUM_FRAMES,
    image_size=IMAGE_SIZE,
    device="auto",
) -> FrameMean:
    return FrameMean(name, frame_encoder, num_frames, image_size, device)


@register("video", "two_stream")
def two_stream(
    name="two_stream",
    frame_encoder="efficientnet_lite0",
    num_frames=NUM_FRAMES,
    image_size=IMAGE_SIZE,
    flow_bins=8,
    flow_grid=2,
    device="auto",
) -> TwoStream:
    return TwoStream(name, frame_encoder, num_frames, image_size, device, flow_bins, flow_grid)


@register("video", "r3d_18")
class R3D18(Extractor):
    """torchvision's 3D ResNet-18 up to its global pool: a 512-d vector per clip."""

    modality = "video"
    kind = "pooled"
    default_batch_size = 8
    default_workers = 2

    def __init__(
        self,
        name="r3d_18",
        weights=None,
        num_frames=NUM_FRAMES,
        image_size=IMAGE_SIZE,
        seed=0,
        device="auto",
    ):
        super().__init__(device)
        _check_frames(name, num_frames, image_size)
        self.name, self.num_frames, self.image_size = name, int(num_frames), int(image_size)
        with seeded(seed):
            model = torchvision.models.video.r3d_18(weights=None)
        self.options = {
            "weights": weights,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "seed": seed,
        }
        if weights is not None:
            if is_weights_path(weights):
                model.load_state_dict(load_state_dict(weights))
                self.options["weights_sha256"] = file_digest(weights)
            else:
                model.load_state_dict(torchvision_state_dict("r3d_18", weights))
        model.fc = nn.Identity()
        self.module = model.eval().to(self.device)
        self.dim = 512
        self.mean = torch.tensor(KINETICS_MEAN, device=self.device).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(KINETICS_STD, device=self.device).view(1, 3, 1, 1, 1)

    def preprocess(self, item) -> torch.Tensor:
        return _to_chw(read_frames(item, self.num_frames, self.image_size))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.to(self.device).permute(0, 2, 1, 3, 4).float().div_(255)  # [B, 3, T, S, S]
        return self.module((x - self.mean) / self.std)
