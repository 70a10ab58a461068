"""Audio encoders (librosa): MFCC, LPC and log-mel frames, pooled or as sequences.
Items are audio paths (or 1-D arrays at `sample_rate`), mixed to mono and resampled; frames
are 25 ms with a 10 ms hop. `kind="pooled"`: per-coefficient mean and std (`2 * n`);
`kind="sequence"`: the frames, `[N, T, n]`, zero-padded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmlab.core.extras import require
from mmlab.features.base import Extractor, check_kind, pad_cat
from mmlab.features.registry import register


def load_audio(item, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` from a path (or an array already at that rate)."""
    if isinstance(item, np.ndarray):
        return item.astype(np.float32)
    import soundfile

    librosa = require("librosa", "reading audio for the audio encoders")

    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:
        raise ValueError(f"audio file {path} could not be decoded: {err}") from err
    wave = wave.mean(axis=1)
    if rate != sample_rate:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    return wave


class FrameFeatures(Extractor):
    """Per-frame coefficients of a waveform; subclasses say which (`frames(wave) -> [T, n]`)."""

    modality = "audio"
    default_batch_size = 64

    def __init__(self, name, n: int, kind: str, sample_rate: int, device="cpu", **options):
        super().__init__("cpu")  # numpy work: the device does not matter
        require("librosa", f"the {name!r} audio encoder")  # here, not in a DataLoader worker
        self.name, self.kind = name, check_kind(kind, ("pooled", "sequence"), name)
        self.n, self.sample_rate = n, sample_rate
        self.win, self.hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
        self.dim = 2 * n if kind == "pooled" else n
        self.options = {"n": n, "sample_rate": sample_rate, **options}

    def frames(self, wave: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def preprocess(self, item) -> torch.Tensor:
        wave = load_audio(item, self.sample_rate)
        if len(wave) < self.win:
            wave = np.pad(wave, (0, self.win - len(wave)))
        return torch.from_numpy(np.ascontiguousarray(self.frames(wave), dtype=np.float32))

    def collate(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        return batch

    def forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "pooled":
            return torch.stack([torch.cat([f.mean(0), f.std(0, correction=0)]) for f in batch])
        return pad_cat([f.unsqueeze(0) for f in batch])


@register("audio", "mfcc")
class MFCC(FrameFeatures):
    def __init__(self, name="mfcc", n_mfcc=20, kind="pooled", sample_rate=16_000, device="cpu"):
        super().__init__(name, n_mfcc, kind, sample_rate)

    def frames(self, wave):
        import librosa

        mfcc = librosa.feature.mfcc(
            y=wave,
            sr=self.sample_rate,
            n_mfcc=self.n,
            n_fft=512,
            win_length=self.win,
            hop_length=self.hop,
        )
        return mfcc.T


@register("audio", "logmel")
class LogMel(FrameFeatures):
    def __init__(self, name="logmel", n_mels=64, kind="pooled", sample_rate=16_000, device="cpu"):
        super().__init__(name, n_mels, kind, sample_rate)

    def frames(self, wave):
        import librosa

        mel = librosa.feature.melspectrogram(
            y=wave,
            sr=self.sample_rate,
            n_mels=self.n,
            n_fft=512,
            win_length=self.win,
            hop_length=self.hop,
        )
        return librosa.power_to_db(mel, ref=1.0, top_db=80.0).T


@register("audio", "lpc")
class LPC(FrameFeatures):
    """Linear-prediction coefficients per frame (the vocal-tract filter, order `order`)."""

    def __init__(self, name="lpc", order=12, kind="pooled", sample_rate=16_000, device="cpu"):
        super().__init__(name, order, kind, sample_rate)

    def frames(self, wave):
        import librosa

        frames = librosa.util.frame(wave, frame_length=self.win, hop_length=self.hop, axis=0)
        frames = frames * np.hanning(self.win)
        # A whisper of fixed noise keeps silent frames well-conditioned (Burg's method divides
        # by the frame energy); deterministic so features are reproducible.
        frames = frames + 1e-5 * np.random.default_rng(0).standard_normal(frames.shape)
        coeffs = librosa.lpc(frames.astype(np.float64), order=self.n, axis=-1)
        return coeffs[:, 1:]  # the leading coefficient is always 1
