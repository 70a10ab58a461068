"""Audio (MFCC, LPC, log-mel) and video (frame mean, r3d_18, two-stream) extractors on files
written here: tones as wav, a moving square as mp4."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile
import torch

import mmlab.features as F
from mmlab.features.video import flow_images, read_frames

RATE = 16_000


def tone(path, hz: float, rate: int = RATE, seconds: float = 0.5):
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return str(path)


def moving_square(path, dx: int, frames: int = 8, side: int = 48):
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            rgb = np.full((side, side, 3), 30, np.uint8)
            x = 12 + dx * i
            rgb[16:32, x : x + 14] = (230, 60, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wav")
    return [tone(folder / f"{hz}.wav", hz) for hz in (220, 440, 880)] + [
        tone(folder / "8k.wav", 440, rate=8000, seconds=0.3)
    ]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mp4")
    return [moving_square(folder / "right.mp4", 2), moving_square(folder / "left.mp4", -2)]


@pytest.mark.parametrize(("name", "n"), [("mfcc", 20), ("lpc", 12), ("logmel", 64)])
def test_audio_pooled_and_sequence(wavs, name, n):
    pooled = F.create("audio", name).extract(wavs)
    seq = F.create("audio", name, kind="sequence").extract(wavs)
    assert pooled.shape == (4, 2 * n) and torch.isfinite(pooled).all()
    assert seq.shape[0] == 4 and seq.shape[2] == n and seq.shape[1] >= 48  # 0.5 s, 10 ms hop
    assert torch.all(seq[3, 35:] == 0)  # the 0.3 s clip is padded
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-3)  # 220 Hz vs 440 Hz
    torch.testing.assert_close(pooled[0, :n], seq[0, : seq.shape[1]].mean(0), atol=1e-3, rtol=1e-3)


def test_audio_resamples_to_the_extractor_rate(wavs):
    out = F.create("audio", "mfcc").extract([wavs[1], wavs[3]])  # 440 Hz at 16 kHz and 8 kHz
    a, b = torch.nn.functional.normalize(out[:, :20], dim=1)
    assert a @ b > 0.95


def test_audio_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        F.create("audio", "mfcc").extract([str(tmp_path / "missing.wav")])


def test_read_frames_and_flow_see_the_motion(clips):
    frames = read_frames(clips[0], num_frames=8, image_size=48)
    assert frames.shape == (8, 48, 48, 3) and frames.dtype == np.uint8
    right, left = flow_images(frames), flow_images(read_frames(clips[1], 8, 48))
    assert right.shape == (7, 48, 48, 3)
    # Channel 0 is horizontal motion around mid-grey: right > 128 > left on the moving square.
    assert right[:, 16:32, :, 0].astype(float).max() > 140
    assert left[:, 16:32, :, 0].astype(float).min() < 116


@pytest.mark.parametrize(
    ("name", "dim"), [("frame_mean", 256), ("two_stream", 512), ("r3d_18", 512)]
)
def test_video_extractors(clips, name, dim):
    options = {"frame_encoder": "small_cnn"} if name != "r3d_18" else {}
    ex = F.create("video", name, num_frames=4, image_size=32, **options)
    out = ex.extract(clips, num_workers=0)
    again = ex.extract(clips, num_workers=2)  # decoding in DataLoader workers: same result
    assert out.shape == (2, dim) and ex.dim == dim
    torch.testing.assert_close(out, again)
    if name == "two_stream":  # RGB half = frame mean; flow half = the same CNN on flow images
        rgb = F.create("video", "frame_mean", num_frames=4, image_size=32, **options)
        torch.testing.assert_close(out[:, :256], rgb.extract(clips, num_workers=0))
        assert not torch.allclose(out[:, 256:], out[:, :256], atol=1e-3)


def test_frame_mean_with_the_pretrained_default(clips):
    ex = F.create("video", "frame_mean", num_frames=2, image_size=32)
    assert ex.extract(clips[:1], num_workers=0).shape == (1, 1280)
    assert ex.identity["frame_encoder"]["weights"] == "imagenet"


def test_video_missing_file_is_named(tmp_path):
    ex = F.create("video", "r3d_18", num_frames=2, image_size=32)
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        ex.extract([str(tmp_path / "gone.mp4")], num_workers=0)
