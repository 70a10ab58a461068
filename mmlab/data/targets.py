"""Label targets of the embedded scenes: questions whose answers live in different modalities.
`motion`: which way the scene moves, told only by the video's time axis. `first_shape`,
`first_colour`: the leftmost object's, carried by image, caption and sound. `circle_xor_sideways`:
does the scene move sideways exactly when it holds a circle? Balanced under uniform motion
whatever the share of circles, and at chance for any single modality that lacks both halves."""

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
        Target(
            "motion",
            "which way does the scene move?",
            "video (its time axis)",
            ("motion",),
            lambda row: row["motion"],
        ),
        Target(
            "first_shape",
            "what shape is the first object?",
            "image, text, audio",
            ("first_shape",),
            lambda row: row["first_shape"],
        ),
        Target(
            "first_colour",
            "what colour is the first object?",
            "image, text, audio",
            ("first_colour",),
            lambda row: row["first_colour"],
        ),
        Target(
            "circle_xor_sideways",
            "does the scene move sideways exactly when it holds a circle?",
            "video (motion) with image, text or audio (the circle)",
            ("objects", "motion"),
            _has_circle_xor_sideways,
        ),
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
