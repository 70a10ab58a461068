"""Audio (MFCC, LPC, log-mel) and video (frame mean, r3d_18, two-stream) extractors on files
written here: tones as wav, a moving square as mp4."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile
import torch

import mmlab.features as F
from mmlab.features import cache
from mmlab.features.video import flow_dim, flow_histogram, optical_flow, read_frames

RATE = 16_000


def tone(path, hz: float, rate: int = RATE, seconds: float = 0.5):
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return str(path)


def square_frames(
    dx: int,
    dy: int = 0,
    frames: int = 8,
    side: int = 48,
    colour=(230, 60, 40),
    background=(30, 30, 30),
) -> np.ndarray:
    """A 14-px square moving (dx, dy) pixels per frame over a flat background."""
    out = np.empty((frames, side, side, 3), np.uint8)
    for i in range(frames):
        out[i] = background
        x, y = 17 + dx * i, 17 + dy * i
        out[i, y : y + 14, x : x + 14] = colour
    return out


def moving_square(path, dx: int, dy: int = 0, frames: int = 8, side: int = 48, backwards=False):
    clip = square_frames(dx, dy, frames, side)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for rgb in clip[::-1] if backwards else clip:
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


@pytest.fixture(scope="module")
def four_ways(tmp_path_factory):
    """One clip per direction, named by where the square goes (image y points down)."""
    folder = tmp_path_factory.mktemp("mp4-4")
    moves = {"right": (2, 0), "down": (0, 2), "left": (-2, 0), "up": (0, -2)}
    return {name: moving_square(folder / f"{name}.mp4", *move) for name, move in moves.items()}


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
    right, left = optical_flow(frames), optical_flow(read_frames(clips[1], 8, 48))
    assert right.shape == (7, 48, 48, 2) and right.dtype == np.float32
    # On the square, horizontal flow follows the motion's sign; vertical flow stays small.
    square = (slice(None), slice(20, 28))
    assert right[square][..., 0].mean() > 0.5 > abs(right[square][..., 1].mean())
    assert left[square][..., 0].mean() < -0.5


def test_flow_sees_an_object_as_bright_as_its_background():
    """Grey (luma) is equal inside and outside the square: only its colour shows it moving."""
    frames = square_frames(2, colour=(200, 80, 116), background=(120, 120, 120))
    assert np.ptp([np.dot(c, (0.299, 0.587, 0.114)) for c in frames[0].reshape(-1, 3)]) < 1.5
    flow = optical_flow(frames)
    assert flow[:, 20:28, ..., 0].mean() > 0.3


def test_flow_histogram_keeps_the_sign_of_the_motion():
    bins, grid = 8, 2
    direction = {"right": 0, "down": 2, "left": 4, "up": 6}  # bin centres: 0, 90, 180, 270 deg
    moves = {"right": (2, 0), "down": (0, 2), "left": (-2, 0), "up": (0, -2)}
    for name, (dx, dy) in moves.items():
        hof = flow_histogram(optical_flow(square_frames(dx, dy)), bins, grid)
        assert hof.shape == (flow_dim(bins, grid),) == (41,)
        whole = hof[:bins]
        assert whole.argmax() == direction[name], (name, whole.round(2))
        assert whole[direction[name]] > 0.5 and whole[(direction[name] + 4) % 8] < 0.05
        assert abs(whole.sum() - 1) < 1e-4 and abs(hof[bins:-1].sum() - 1) < 1e-4
        assert 0 < hof[-1] < 2  # mean speed over the frame, in pixels per frame
    still = flow_histogram(np.zeros((3, 16, 16, 2), np.float32), bins, grid=1)
    assert still.shape == (9,) and not still.any()  # nothing moves: no direction, no speed


def test_two_stream_features_tell_the_four_directions_apart(four_ways):
    ex = F.create("video", "two_stream", frame_encoder="small_cnn")  # 4 frames of 32 px
    out = ex.extract(list(four_ways.values()), num_workers=0)
    flow = out[:, ex.frame.dim :]
    # Each clip's whole-frame histogram peaks at its own direction: the sign survived decoding,
    # resizing and pooling.
    assert flow[:, :8].argmax(1).tolist() == [0, 2, 4, 6]
    assert torch.cdist(flow[:, :8], flow[:, :8]).fill_diagonal_(9).min() > 0.5


def test_a_clip_played_backwards_fools_frame_mean_not_two_stream(tmp_path):
    forward = moving_square(tmp_path / "forward.mp4", 2)
    backward = moving_square(tmp_path / "backward.mp4", 2, backwards=True)
    ex = F.create("video", "two_stream", frame_encoder="small_cnn")
    out = ex.extract([forward, backward], num_workers=0)
    rgb, flow = out[:, : ex.frame.dim], out[:, ex.frame.dim : ex.frame.dim + 8]
    # The same frames in the opposite order (up to the codec): the time average is the same ...
    assert torch.nn.functional.cosine_similarity(rgb[0], rgb[1], dim=0) > 0.999
    # ... and the flow histogram points the other way (right: bin 0; left: bin 4).
    assert flow[0].argmax() == 0 and flow[1].argmax() == 4
    assert flow[0, 0] - flow[1, 0] > 0.5 and flow[1, 4] - flow[0, 4] > 0.5


@pytest.mark.parametrize(
    ("name", "dim"), [("frame_mean", 256), ("two_stream", 256 + 41), ("r3d_18", 512)]
)
def test_video_extractors(clips, name, dim):
    options = {"frame_encoder": "small_cnn"} if name != "r3d_18" else {}
    ex = F.create("video", name, num_frames=4, image_size=32, **options)
    out = ex.extract(clips, num_workers=0)
    again = ex.extract(clips, num_workers=2)  # decoding in DataLoader workers: same result
    assert out.shape == (2, dim) and ex.dim == dim
    torch.testing.assert_close(out, again)
    if name == "two_stream":  # RGB half = frame mean; flow half = the orientation histogram
        rgb = F.create("video", "frame_mean", num_frames=4, image_size=32, **options)
        torch.testing.assert_close(out[:, :256], rgb.extract(clips, num_workers=0))
        assert out[0, 256] > 0.5 and out[1, 256 + 4] > 0.5  # right: bin 0; left: bin 4


def test_video_defaults_are_one_setting():
    """Notebooks asking for an encoder by name share its cache entries: same frames, same size."""
    made = [F.create("video", n, frame_encoder="small_cnn") for n in ("frame_mean", "two_stream")]
    made.append(F.create("video", "r3d_18"))
    assert {(ex.num_frames, ex.image_size) for ex in made} == {(4, 32)}


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("frame_mean", {"num_frames": 8}),
        ("frame_mean", {"image_size": 64}),
        ("frame_mean", {"frame_encoder": "efficientnet_lite0"}),
        ("two_stream", {"num_frames": 8}),
        ("two_stream", {"image_size": 64}),
        ("two_stream", {"flow_bins": 12}),
        ("two_stream", {"flow_grid": 1}),
        ("r3d_18", {"num_frames": 8}),
        ("r3d_18", {"image_size": 64}),
        ("r3d_18", {"seed": 1}),
    ],
)
def test_video_cache_keys_follow_the_configuration(name, change):
    base = {"frame_encoder": "small_cnn"} if name != "r3d_18" else {}
    key = cache.cache_key("fp", "train", "video", F.create("video", name, **base).identity)
    changed = F.create("video", name, **{**base, **change})
    assert cache.cache_key("fp", "train", "video", changed.identity) != key
    same = F.create("video", name, **base)
    assert cache.cache_key("fp", "train", "video", same.identity) == key


def test_two_stream_and_frame_mean_never_share_a_cache_entry():
    ids = [
        F.create("video", n, frame_encoder="small_cnn").identity
        for n in ("frame_mean", "two_stream")
    ]
    assert cache.cache_key("fp", "train", "video", ids[0]) != cache.cache_key(
        "fp", "train", "video", ids[1]
    )
    assert ids[1]["farneback"]["winsize"] and ids[1]["opencv"]


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("two_stream", {"num_frames": 1}, "num_frames=1; it needs at least 2"),
        ("two_stream", {"flow_bins": 2}, "at least 4 orientation bins"),
        ("frame_mean", {"num_frames": 0}, "num_frames=0"),
        ("r3d_18", {"image_size": 4}, "image_size=4"),
    ],
)
def test_video_bad_settings_are_named(name, options, match):
    extra = {"frame_encoder": "small_cnn"} if name != "r3d_18" else {}
    with pytest.raises(ValueError, match=match):
        F.create("video", name, **extra, **options)


def test_frame_mean_with_the_pretrained_default(clips):
    ex = F.create("video", "frame_mean", num_frames=2, image_size=32)
    assert ex.extract(clips[:1], num_workers=0).shape == (1, 1280)
    assert ex.identity["frame_encoder"]["weights"] == "imagenet"


def test_video_missing_file_is_named(tmp_path):
    ex = F.create("video", "r3d_18", num_frames=2, image_size=32)
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        ex.extract([str(tmp_path / "gone.mp4")], num_workers=0)
