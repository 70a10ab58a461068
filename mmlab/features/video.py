"""Video encoders: mean of frame features, a 3D CNN (r3d_18), and a two-stream RGB + flow net.

Each item is a path to a video file, decoded with PyAV; `num_frames` frames are sampled evenly
and resized to `image_size`. Decoding (and optical flow) happen in `preprocess`, so DataLoader
workers do them while the network runs.

- `frame_mean`: an image encoder (default EfficientNet-Lite0) on every frame, averaged: the
  simple baseline, blind to motion.
- `r3d_18`: torchvision's 3D ResNet-18, random init offline (or `weights=` a local state dict
  or a torchvision name): a 512-d clip vector.
- `two_stream`: the frame encoder on the RGB frames plus the same encoder on optical flow
  (OpenCV Farneback between consecutive frames, drawn as a 3-channel image: dx, dy, speed),
  each averaged over time and concatenated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ..extras import require
from .base import Extractor, seeded
from .image import file_digest, is_weights_path, load_state_dict, torchvision_state_dict
from .registry import lookup, register

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def read_frames(path, num_frames: int, image_size: int) -> np.ndarray:
    """`num_frames` evenly spaced RGB frames, uint8 `[T, S, S, 3]` (the last frame repeats if the
    clip is shorter)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24", width=image_size, height=image_size)
                      for f in container.decode(video=0)]  # fmt: skip
    except av.error.FFmpegError as err:
        raise ValueError(f"video file {path} could not be decoded: {err}") from err
    if not frames:
        raise ValueError(f"video file {path} has no video frames")
    picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([frames[i] for i in picks])


def flow_images(frames: np.ndarray, scale: float = 8.0) -> np.ndarray:
    """Farneback optical flow between consecutive frames, as uint8 images `[T-1, S, S, 3]`:
    horizontal and vertical motion around mid-grey, and speed."""
    cv2 = require("cv2", "optical flow (the two_stream video encoder)")

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    out = []
    for prev, nxt in zip(grey[:-1], grey[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        speed = np.linalg.norm(flow, axis=-1, keepdims=True)
        image = np.concatenate([128 + scale * flow, 2 * scale * speed], axis=-1)
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(out)


def _to_chw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # [T, 3, S, S]


class FrameEncoded(Extractor):
    """Shared by `frame_mean` and `two_stream`: an image extractor applied to frame stacks."""

    modality = "video"
    kind = "pooled"
    default_batch_size = 16
    default_workers = 2

    def __init__(self, name, frame_encoder, num_frames, image_size, device, flow: bool):
        super().__init__(device)
        self.name, self.flow = name, flow
        self.num_frames, self.image_size = num_frames, image_size
        self.frame = lookup("image", frame_encoder)(
            name=frame_encoder, image_size=image_size, kind="pooled", device=device
        )
        self.dim = self.frame.dim * (2 if flow else 1)
        self.options = {"frame_encoder": self.frame.identity, "num_frames": num_frames,
                        "image_size": image_size}  # fmt: skip

    def preprocess(self, item):
        frames = read_frames(item, self.num_frames, self.image_size)
        rgb = _to_chw(frames)
        return (rgb, _to_chw(flow_images(frames))) if self.flow else rgb

    def _mean_over_time(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        return self.frame.forward(clips.flatten(0, 1)).view(b, t, -1).mean(1)

    def forward(self, batch) -> torch.Tensor:
        if not self.flow:
            return self._mean_over_time(batch)
        rgb, flow = batch
        return torch.cat([self._mean_over_time(rgb), self._mean_over_time(flow)], dim=1)

    def collate(self, batch):
        if self.flow:
            return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        return torch.stack(batch)


@register("video", "frame_mean")
def frame_mean(name="frame_mean", frame_encoder="efficientnet_lite0", num_frames=8,
               image_size=64, device="auto") -> FrameEncoded:  # fmt: skip
    return FrameEncoded(name, frame_encoder, num_frames, image_size, device, flow=False)


@register("video", "two_stream")
def two_stream(name="two_stream", frame_encoder="efficientnet_lite0", num_frames=8,
               image_size=64, device="auto") -> FrameEncoded:  # fmt: skip
    require("cv2", "the two_stream video encoder")  # here, not in a DataLoader worker
    return FrameEncoded(name, frame_encoder, num_frames, image_size, device, flow=True)


@register("video", "r3d_18")
class R3D18(Extractor):
    """torchvision's 3D ResNet-18 up to its global pool: a 512-d vector per clip."""

    modality = "video"
    kind = "pooled"
    default_batch_size = 8
    default_workers = 2

    def __init__(self, name="r3d_18", weights=None, num_frames=8, image_size=64, seed=0,
                 device="auto"):  # fmt: skip
        super().__init__(device)
        self.name, self.num_frames, self.image_size = name, num_frames, image_size
        with seeded(seed):
            model = torchvision.models.video.r3d_18(weights=None)
        self.options = {"weights": weights, "num_frames": num_frames, "image_size": image_size,
                        "seed": seed}  # fmt: skip
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
