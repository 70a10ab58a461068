"""The embedded dataset: small scenes of coloured shapes, seen, described, heard and filmed.
A sample is one *scene*: 1 to 3 objects, each a shape, colour, size and grid cell, plus a
motion direction. All else derives from it with the sample's own random stream, so a seed
gives byte-identical files for any number of workers: an RGB image on a textured background
(colour counting is not enough); five captions; a 1 s 16 kHz WAV where each object is a tone
(pitch: shape, pulse rate: colour, loudness: size, onset: how far left); a short mp4 of the
motion; and the `match` task, a caption of the scene (1) or of the scene changed in one
attribute (0, `match_kind`), both drawn alike so text alone cannot tell them apart.
The layout is Hugging Face's imagefolder, so the folder loader reads it like any user's."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmlab.core.workspace import atomic_path

GENERATOR_VERSION = 2  # part of the default dataset's folder name: bump when output changes
INFO_FILE = "mmlab_synthetic.json"

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
RELATIONS = ("left", "right", "above", "below")
MOTIONS = ("left", "right", "up", "down")
MATCH_KINDS = ("positive", "colour", "shape", "size", "relation")

RGB = {
    "red": (214, 38, 38),
    "green": (38, 160, 60),
    "blue": (40, 72, 220),
    "yellow": (236, 214, 40),
    "purple": (140, 52, 182),
    "orange": (244, 134, 22),
}

# Surface forms per attribute value; the first is canonical and most frequent, so a captioner
# can learn the usual wording while references still vary.
SYNONYMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("colour", "red"): ("red", "crimson", "scarlet"),
    ("colour", "green"): ("green", "emerald"),
    ("colour", "blue"): ("blue", "azure", "cobalt"),
    ("colour", "yellow"): ("yellow", "golden", "lemon"),
    ("colour", "purple"): ("purple", "violet"),
    ("colour", "orange"): ("orange", "amber"),
    ("shape", "circle"): ("circle", "disc", "ball"),
    ("shape", "square"): ("square", "box", "block"),
    ("shape", "triangle"): ("triangle", "wedge"),
    ("shape", "diamond"): ("diamond", "rhombus"),
    ("shape", "cross"): ("cross", "plus sign"),
    ("size", "small"): ("small", "little", "tiny"),
    ("size", "large"): ("large", "big"),
    ("relation", "left"): ("to the left of", "left of", "on the left of"),
    ("relation", "right"): ("to the right of", "right of", "on the right of"),
    ("relation", "above"): ("above", "over"),
    ("relation", "below"): ("below", "under", "beneath"),
}
CANONICAL_WEIGHT = 0.7  # probability of the first (canonical) surface form

LEXICON: dict[str, tuple[str, str]] = {
    word: key for key, words in SYNONYMS.items() for word in words
}

# Caption templates per object count, with weights. {A},{B},{C}: noun phrases in mention order;
# {rel}: relation of A to B; {rel_ba}: of B to A. Templates marked True state a relation.
TEMPLATES: dict[int, tuple[tuple[str, float, bool], ...]] = {
    1: (
        ("{A} on a textured background", 6, False),
        ("there is {A} in the picture", 2, False),
        ("{A}", 2, False),
        ("a picture of {A}", 2, False),
    ),
    2: (
        ("{A} {rel} {B}", 6, True),
        ("there is {A} {rel} {B}", 2, True),
        ("{B} {rel_ba} {A}", 2, True),
        ("{A} and {B}", 1, False),
    ),
    3: (
        ("{A} {rel} {B} and {C}", 6, True),
        ("there is {A} {rel} {B} and {C}", 2, True),
        ("{B} {rel_ba} {A} and {C}", 2, True),
        ("{A} , {B} and {C}", 1, False),
    ),
}
N_CAPTIONS = 5
GRID = 3  # objects sit in distinct cells of a GRID x GRID layout, so they never overlap
DIAMETER = {"small": 0.16, "large": 0.27}  # fraction of the image side
PITCH = {"circle": 220.0, "square": 294.0, "triangle": 392.0, "diamond": 523.0, "cross": 698.0}
PULSE_HZ = {"red": 2.0, "green": 3.0, "blue": 4.5, "yellow": 6.0, "purple": 8.0, "orange": 11.0}
LOUDNESS = {"small": 0.35, "large": 0.8}
SAMPLE_RATE = 16_000
AUDIO_SECONDS = 1.0
VIDEO_FRAMES = 8
VIDEO_FPS = 8
VIDEO_SIZE = 64
MOTION_SPAN = 0.15  # how far (fraction of the side) objects travel over the clip


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float  # jitter of the centre inside its cell, in fractions of the side
    dy: float

    @property
    def x(self) -> float:
        return (self.col + 0.5) / GRID + self.dx

    @property
    def y(self) -> float:
        return (self.row + 0.5) / GRID + self.dy

    def as_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "x": round(self.x, 3),
            "y": round(self.y, 3),
        }


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # in reading order: left to right, then top to bottom
    motion: str


def relation(a, b) -> str:
    """Relation of `a` to `b` (Objs or x, y dicts): horizontal if columns differ, else vertical."""
    ax, ay = (a.x, a.y) if isinstance(a, Obj) else (a["x"], a["y"])
    bx, by = (b.x, b.y) if isinstance(b, Obj) else (b["x"], b["y"])
    if abs(ax - bx) > 0.5 / GRID:
        return "left" if ax < bx else "right"
    return "above" if ay < by else "below"


def scene_objects(row: dict) -> list[tuple[str, str, str]]:
    """The canonical (colour, shape, size) triples of a sample, for grounded metrics."""
    return [(o["colour"], o["shape"], o["size"]) for o in row["objects"]]


def mentions(caption: str) -> list[tuple[str, str]]:
    """(kind, canonical value) of every LEXICON phrase in a caption, longest match first."""
    words = caption.lower().replace(",", " ").split()
    longest = max(len(p.split()) for p in LEXICON)
    found, i = [], 0
    while i < len(words):
        for span in range(min(longest, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + span])
            if phrase in LEXICON:
                found.append(LEXICON[phrase])
                i += span
                break
        else:
            i += 1
    return found


# ----------------------------------------------------------------------------- scenes


def _sorted(objects) -> tuple[Obj, ...]:
    return tuple(sorted(objects, key=lambda o: (o.col, o.row)))


def sample_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, 4))
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    kinds = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)  # distinct looks
    objects = []
    for cell, kind in zip(cells, kinds, strict=True):
        size = SIZES[int(rng.integers(len(SIZES)))]
        slack = max(0.0, (1 / GRID - DIAMETER[size]) / 2 - 0.01)
        dx, dy = rng.uniform(-slack, slack, size=2)
        objects.append(
            Obj(
                shape=SHAPES[int(kind) // len(COLOURS)],
                colour=COLOURS[int(kind) % len(COLOURS)],
                size=size,
                row=int(cell) // GRID,
                col=int(cell) % GRID,
                dx=float(dx),
                dy=float(dy),
            )
        )
    return Scene(objects=_sorted(objects), motion=MOTIONS[int(rng.integers(len(MOTIONS)))])


# ----------------------------------------------------------------------------- captions


def _word(rng: np.random.Generator, kind: str, value: str) -> str:
    words = SYNONYMS[(kind, value)]
    if len(words) == 1 or rng.random() < CANONICAL_WEIGHT:
        return words[0]
    return words[1 + int(rng.integers(len(words) - 1))]


def _noun_phrase(rng: np.random.Generator, obj: Obj, with_size: bool) -> str:
    words = [_word(rng, "colour", obj.colour), _word(rng, "shape", obj.shape)]
    if with_size:
        words.insert(0, _word(rng, "size", obj.size))
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _pick(rng: np.random.Generator, options):
    weights = np.array([o[1] for o in options], dtype=float)
    return options[int(rng.choice(len(options), p=weights / weights.sum()))]


def caption(
    rng: np.random.Generator,
    scene: Scene,
    *,
    order: tuple[int, ...] | None = None,
    with_size: bool | None = None,
    relational: bool = False,
) -> str:
    """One caption of `scene`. `order`: mention order (default: usually reading order);
    `relational`: only templates that state a relation."""
    n = len(scene.objects)
    if order is None:
        order = tuple(range(n)) if rng.random() < 0.6 else tuple(int(i) for i in rng.permutation(n))
    if with_size is None:
        with_size = bool(rng.random() < 0.75)
    options = [t for t in TEMPLATES[n] if t[2] or not relational or n == 1]
    template = _pick(rng, options)[0]
    objs = [scene.objects[i] for i in order]
    slots = {k: _noun_phrase(rng, o, with_size) for k, o in zip("ABC", objs, strict=False)}
    if n >= 2:
        slots["rel"] = _word(rng, "relation", relation(objs[0], objs[1]))
        slots["rel_ba"] = _word(rng, "relation", relation(objs[1], objs[0]))
    return template.format(**slots)


def _with(scene: Scene, index: int, **changes) -> Scene:
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **changes)
    return Scene(objects=_sorted(objects), motion=scene.motion)


def _hard_negative(rng: np.random.Generator, scene: Scene, kind: str, order) -> Scene:
    """The scene changed in one attribute of kind `kind`, keeping objects distinct."""
    objs = scene.objects
    if kind == "relation":  # swap the places of the two objects whose relation is stated
        a, b = objs[order[0]], objs[order[1]]
        moved = list(objs)  # cells are distinct, so the stated relation flips
        moved[order[0]] = replace(a, row=b.row, col=b.col, dx=b.dx, dy=b.dy)
        moved[order[1]] = replace(b, row=a.row, col=a.col, dx=a.dx, dy=a.dy)
        return Scene(objects=tuple(moved), motion=scene.motion)
    index = int(rng.integers(len(objs)))
    obj = objs[index]
    if kind == "size":
        return _with(scene, index, size=SIZES[1 - SIZES.index(obj.size)])
    values = COLOURS if kind == "colour" else SHAPES
    taken = {(o.colour, o.shape) for i, o in enumerate(objs) if i != index}
    choices = [
        v
        for v in values
        if v != getattr(obj, kind)
        and ((v, obj.shape) if kind == "colour" else (obj.colour, v)) not in taken
    ]
    return _with(scene, index, **{kind: choices[int(rng.integers(len(choices)))]})


def match_pair(rng: np.random.Generator, scene: Scene) -> tuple[str, int, str]:
    """(caption, label, kind) for the match task. Mention order is uniform and every caption states
    sizes (and a relation for two or more objects), so each change shows in the text while the
    text alone stays uninformative."""
    n = len(scene.objects)
    order = tuple(int(i) for i in rng.permutation(n))
    if rng.random() < 0.5:
        return caption(rng, scene, order=order, with_size=True, relational=True), 1, "positive"
    kinds = [k for k in MATCH_KINDS[1:] if k != "relation" or n >= 2]
    kind = kinds[int(rng.integers(len(kinds)))]
    changed = _hard_negative(rng, scene, kind, order)
    if kind == "relation":  # keep the mention order with the objects that moved
        text = caption(rng, changed, order=order, with_size=True, relational=True)
    else:  # objects were re-sorted: mention them in a fresh uniformly random order
        perm = tuple(int(i) for i in rng.permutation(n))
        text = caption(rng, changed, order=perm, with_size=True, relational=True)
    return text, 0, kind


def scene_from_row(row: dict) -> Scene:
    """The Scene of a dataset row (its `objects` and `motion` columns)."""
    objects = []
    for o in row["objects"]:
        col = min(GRID - 1, int(o["x"] * GRID))
        r = min(GRID - 1, int(o["y"] * GRID))
        dx, dy = o["x"] - (col + 0.5) / GRID, o["y"] - (r + 0.5) / GRID
        objects.append(Obj(o["shape"], o["colour"], o["size"], r, col, dx, dy))
    return Scene(objects=_sorted(objects), motion=row.get("motion", MOTIONS[0]))


def more_match_pairs(row: dict, k: int, seed: int = 0) -> list[tuple[str, int, str]]:
    """`k` more (caption, label, kind) match pairs for a training row, drawn like the `match_*`
    columns; deterministic in (row id, seed)."""
    digest = hashlib.blake2b(str(row.get("id", "")).encode(), digest_size=8).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest, "little")])
    scene = scene_from_row(row)
    return [match_pair(rng, scene) for _ in range(k)]


# ----------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A desaturated textured background: stripes, checks or blotches, plus grain."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = rng.uniform(95, 175) + rng.uniform(-12, 12, size=3)
    pattern = int(rng.integers(3))
    if pattern == 0:  # stripes in a random direction
        angle, freq = rng.uniform(0, math.pi), rng.uniform(4, 10)
        field = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    elif pattern == 1:  # checks
        freq = int(rng.integers(3, 8))
        field = np.where((np.floor(xx * freq) + np.floor(yy * freq)) % 2 == 0, 1.0, -1.0)
    else:  # smooth blotches: a few random low-frequency waves
        field = np.zeros_like(xx)
        for _ in range(4):
            fx, fy, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * math.pi)
            field += np.sin(2 * math.pi * (fx * xx + fy * yy) + phase) / 2
    amplitude = rng.uniform(12, 28)
    grain = rng.normal(0, 6, size=(side, side, 1))
    image = base + amplitude * field[..., None] + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, side: int, fill, offset=(0.0, 0.0)) -> None:
    cx, cy = (obj.x + offset[0]) * side, (obj.y + offset[1]) * side
    r = DIAMETER[obj.size] * side / 2
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        s = r * 0.88
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif obj.shape == "cross":
        t = r * 0.36
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; valid: {SHAPES}")


def render(scene: Scene, rng: np.random.Generator, side: int, offsets=None) -> list[Image.Image]:
    """The scene drawn once per offset (one offset: a still image), supersampled 2x."""
    big = side * 2  # shapes are drawn at twice the size, then averaged down: smooth edges
    texture = Image.fromarray(_background(rng, side))
    background = texture.resize((big, big), Image.Resampling.NEAREST)
    fills = [
        tuple(int(np.clip(c + rng.integers(-14, 15), 0, 255)) for c in RGB[o.colour])
        for o in scene.objects
    ]
    frames = []
    for offset in offsets or [(0.0, 0.0)]:
        canvas = background.copy()
        draw = ImageDraw.Draw(canvas)
        for obj, fill in zip(scene.objects, fills, strict=True):
            _draw(draw, obj, big, fill, offset)
        frames.append(canvas.resize((side, side), Image.Resampling.BOX))
    return frames


def sound(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene's audio clip as float32 in [-1, 1]."""
    t = np.arange(int(SAMPLE_RATE * AUDIO_SECONDS), dtype=np.float64) / SAMPLE_RATE
    wave = np.zeros_like(t)
    for obj in scene.objects:
        f = PITCH[obj.shape] * rng.uniform(0.98, 1.02)
        tone = np.sin(2 * math.pi * f * t) + 0.4 * np.sin(4 * math.pi * f * t)
        pulse = (0.5 + 0.5 * np.cos(2 * math.pi * PULSE_HZ[obj.colour] * t)) ** 2
        onset = 0.35 * obj.x * AUDIO_SECONDS
        wave += LOUDNESS[obj.size] * tone * pulse * (t >= onset)
    wave += rng.normal(0, rng.uniform(0.05, 0.15), size=t.shape)
    return (0.9 * wave / max(1e-6, np.abs(wave).max())).astype(np.float32)


def clip_offsets(motion: str) -> list[tuple[float, float]]:
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[motion]
    steps = np.linspace(-0.5, 0.5, VIDEO_FRAMES) * MOTION_SPAN
    return [(dx * s, dy * s) for s in steps]


def _write_wav(path: Path, samples: np.ndarray) -> None:
    """16-bit mono PCM WAV (the standard library's writer: no flush per file)."""
    import wave

    pcm = np.clip(np.rint(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def _write_mp4(path: Path, frames: list[Image.Image]) -> None:
    """MPEG-4 part 2 in an mp4 container; x264 is not byte-reproducible run to run."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        stream.options = {"qscale": "3"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Job:
    index: int
    split: str
    seed: int
    image_size: int
    audio: bool
    video: bool
    root: str


def make_sample(job: _Job) -> dict:
    """Write one sample's files under `job.root/split/` and return its metadata record."""
    rng = np.random.default_rng([job.seed, job.index])
    scene = sample_scene(rng)
    stem = f"{job.index:05d}"
    split_dir = Path(job.root) / job.split
    record: dict = {"file_name": f"images/{stem}.png", "id": stem}
    image = render(scene, rng, job.image_size)[0]
    # compress_level 3: about as small as 6, and faster to write
    image.save(split_dir / record["file_name"], compress_level=3)
    record["captions"] = [caption(rng, scene) for _ in range(N_CAPTIONS)]
    if job.audio:
        record["audio"] = f"audio/{stem}.wav"
        _write_wav(split_dir / record["audio"], sound(scene, rng))
    if job.video:
        record["video"] = f"video/{stem}.mp4"
        frames = render(scene, rng, min(VIDEO_SIZE, job.image_size), clip_offsets(scene.motion))
        _write_mp4(split_dir / record["video"], frames)
    text, label, kind = match_pair(rng, scene)
    record.update(
        objects=[o.as_dict() for o in scene.objects],
        n_objects=len(scene.objects),
        motion=scene.motion,
        first_shape=scene.objects[0].shape,
        first_colour=scene.objects[0].colour,
        match_caption=text,
        match_label=label,
        match_kind=kind,
    )
    return record


def split_sizes(n: int) -> dict[str, int]:
    """80 / 10 / 10, with at least one validation and test sample when n >= 3."""
    held = max(1, round(0.1 * n)) if n >= 3 else 0
    return {"train": n - 2 * held, "validation": held, "test": held}


def generate(
    out,
    n: int = 3000,
    seed: int = 0,
    image_size: int = 128,
    audio: bool = True,
    video: bool = True,
    workers: int = 2,
) -> Path:
    """Write the embedded dataset to `out` atomically (a finished folder or none) and return it."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    out = Path(out)
    with atomic_path(out) as tmp:
        jobs, start = [], 0
        for split, count in split_sizes(n).items():
            if count == 0:
                continue
            for sub in ("images", "audio" if audio else "", "video" if video else ""):
                (tmp / split / sub).mkdir(parents=True, exist_ok=True)
            jobs += [
                _Job(i, split, seed, image_size, audio, video, str(tmp))
                for i in range(start, start + count)
            ]
            start += count
        # Records go to their split's metadata.jsonl as they arrive, in order: memory stays flat
        # however many scenes there are.
        files = {}
        try:
            for job, record in zip(jobs, _run(jobs, workers), strict=True):
                if job.split not in files:
                    path = tmp / job.split / "metadata.jsonl"
                    files[job.split] = open(path, "w", encoding="utf-8")  # noqa: SIM115
                files[job.split].write(json.dumps(record, sort_keys=False) + "\n")
        finally:
            for f in files.values():
                f.close()
        info = {
            "generator": "mmlab.data.synthetic",
            "version": GENERATOR_VERSION,
            "n": n,
            "seed": seed,
            "image_size": image_size,
            "audio": audio,
            "video": video,
            "splits": {k: v for k, v in split_sizes(n).items() if v},
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _run(jobs: list[_Job], workers: int) -> Iterator[dict]:
    """The samples' records in the jobs' order, made in a process pool when it pays; order and
    bytes do not depend on it."""
    if workers <= 1 or len(jobs) < 64:
        yield from map(make_sample, jobs)
        return
    context = multiprocessing.get_context("spawn")  # safe even when the parent holds threads
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        # chunks of at most 256: results wait in memory only until their turn comes
        chunks = max(1, min(256, len(jobs) // (workers * 8)))
        yield from pool.map(make_sample, jobs, chunksize=chunks)
    except BrokenProcessPool as error:
        raise RuntimeError(
            "the synthetic data's worker processes died while starting. Spawned workers "
            "re-import the main script: in a script, put the code that loads or generates "
            "data under `if __name__ == '__main__':`"
        ) from error
    finally:  # a failed or abandoned generation does not wait for the scenes still queued
        pool.shutdown(cancel_futures=True)


def is_generated(path) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def default_dataset(
    n: int = 3000,
    seed: int = 0,
    image_size: int = 128,
    audio: bool = True,
    video: bool = True,
    workers: int = 2,
) -> Path:
    """The embedded dataset under `workspace.data_dir()`, generated on first use under a file lock
    so parallel notebooks wait for one generation."""
    from filelock import FileLock

    from mmlab.core import workspace

    name = f"synthetic-v{GENERATOR_VERSION}-n{n}-s{seed}-i{image_size}"
    name += "" if audio else "-noaudio"
    name += "" if video else "-novideo"
    path = workspace.data_dir() / name
    if is_generated(path):
        return path
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned generation worker re-importing a script that calls this would wait forever
        # on the lock its parent holds.
        raise RuntimeError(
            f"the embedded dataset {name} was requested while a worker process imported the "
            "main script; put the script's code under `if __name__ == '__main__':`"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.parent / f".{name}.lock"):  # flock, or msvcrt on Windows
        if not is_generated(path):
            workspace.sweep_stale(path)  # left by a killed generation; we hold the lock
            generate(
                path,
                n=n,
                seed=seed,
                image_size=image_size,
                audio=audio,
                video=video,
                workers=workers,
            )
    return path


def info(path) -> dict:
    return json.loads((Path(path) / INFO_FILE).read_text(encoding="utf-8"))


if __name__ == "__main__":  # pragma: no cover - `python -m mmlab.data.synthetic OUT N`
    import sys

    generate(sys.argv[1], n=int(sys.argv[2]) if len(sys.argv) > 2 else 3000, workers=os.cpu_count())
