"""Label targets of the embedded scenes: questions whose answers live in different modalities.

The fusion `label` task (notebook 02) asks one of them per comparison, so its table shows
which modality carries what:

- `motion`: which way the scene moves; only the video's time axis tells it (a single frame, the
  image, the caption and the sound are the same whichever way the objects travel).
- `first_shape`, `first_colour`: the first (leftmost) object's shape and colour; the image,
  the caption and the sound (pitch and pulse rate) all carry them.
- `circle_xor_sideways`: "does the scene move sideways (left or right) exactly when it holds a
  circle?". Its classes are balanced on any data whose motion is uniform over the four
  directions, whatever the share of scenes with a circle: half the scenes move sideways,
  independently of what they hold. No single modality answers it: the image, caption and
  sound know the circle but not the motion, the video's motion features not the shapes, so
  each alone is at chance unless it carries both halves.

    values = targets.values(ds["train"], "motion")  # one class name per row
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A question about a scene: the columns it reads and its answer per row."""

    name: str
    question: str
    carried_by: str  # the modalities that hold the answer
    columns: tuple[str, ...]
    answer: Callable[[dict], str]


def _has_circle_xor_sideways(row: dict) -> str:
    circle = any(o["shape"] == "circle" for o in row["objects"])
    sideways = row["motion"] in ("left", "right")
    return "yes" if circle == sideways else "no"


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("motion", "which way does the scene move?", "video (its time axis)",
               ("motion",), lambda row: row["motion"]),
        Target("first_shape", "what shape is the first object?", "image, text, audio",
               ("first_shape",), lambda row: row["first_shape"]),
        Target("first_colour", "what colour is the first object?", "image, text, audio",
               ("first_colour",), lambda row: row["first_colour"]),
        Target("circle_xor_sideways",
               "does the scene move sideways exactly when it holds a circle?",
               "video (motion) with image, text or audio (the circle)",
               ("objects", "motion"), _has_circle_xor_sideways),
    )
}


def available() -> list[str]:
    return list(TARGETS)


def values(split, name: str, split_name: str = "") -> list[str]:
    """The answers of target `name` for every row of one split (a `datasets.Dataset`): a
    registered target from its columns, any other name from the column of that name."""
    target = TARGETS.get(name)
    columns = target.columns if target is not None else (name,)
    missing = [c for c in columns if c not in split.column_names]
    if missing:
        where = f" of split {split_name!r}" if split_name else ""
        known = f"; registered targets: {', '.join(TARGETS)}" if target is None else ""
        raise KeyError(
            f"label column {name!r} needs columns {missing}, not among the columns{where}: "
            f"{split.column_names}{known}. The embedded dataset ('synthetic') has them"
        )
    if target is None:
        return list(split[name])
    return [target.answer(row) for row in split.select_columns(list(columns)).to_list()]
