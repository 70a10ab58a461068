"""Train/validation/test splits for datasets that come with fewer than three. Rows are ordered
by a seeded hash of their image id, so a split is deterministic and stable as images are added."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import datasets

SPLITS = ("train", "validation", "test")
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
# The least a split may hold: train needs two images to learn anything, the held-out splits one.
MIN_ROWS = {"train": 2, "validation": 1, "test": 1}


class SplitError(ValueError):
    """A split is too small to train or evaluate on."""


@dataclass
class SplitPlan:
    """How a dataset's splits came about: `given` by the source, the rest made with `seed`."""

    seed: int
    given: list[str]
    made: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def automatic(self) -> bool:
        return bool(self.made)

    def describe(self) -> str:
        """One line for a log or an MLflow tag, e.g. `auto 80/10/10 by image id, seed 0: ...`."""
        sizes = ", ".join(f"{s} {n}" for s, n in self.sizes.items())
        if not self.made:
            return f"given by the source: {sizes}"
        share = "/".join(f"{round(100 * FRACTIONS[s])}" for s in SPLITS)
        return f"auto {share} by image id (seed {self.seed}), made {self.made}: {sizes}"


def _rank(ident: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{ident}".encode(), digest_size=8).digest()


def _order(ds, seed: int) -> list[int]:
    ids = [str(i) for i in ds["id"]]
    return sorted(range(len(ids)), key=lambda i: (_rank(ids[i], seed), ids[i]))


def _part_sizes(n: int, wanted: dict[str, float]) -> dict[str, int]:
    """Rows per part for `n` rows and these shares; the first part takes the rest, and every
    other part gets at least one row while there are enough rows to go round."""
    total = sum(wanted.values())
    names = list(wanted)
    held = {s: round(n * wanted[s] / total) for s in names[1:]}
    if n >= len(names):
        held = {s: max(1, k) for s, k in held.items()}
    return {names[0]: n - sum(held.values()), **held}


def _carve(ds, wanted: dict[str, float], seed: int) -> dict[str, datasets.Dataset]:
    """Cut `ds` into the named parts with these shares of its rows, in seeded hash order of
    the ids; each part keeps the source's row order."""
    order = _order(ds, seed)
    out, start = {}, 0
    for name, size in _part_sizes(len(order), wanted).items():
        out[name] = ds.select(sorted(order[start : start + size]))
        start += size
    return out


def ensure_splits(splits: dict, seed: int = 0, where: str = "dataset") -> tuple[dict, SplitPlan]:
    """Train, validation and test for `splits`, made where missing: one split is cut 80/10/10;
    a missing held-out split takes its 10% from train. A split under `MIN_ROWS` is a `SplitError`."""
    given = [s for s in SPLITS if s in splits]
    extra = [s for s in splits if s not in SPLITS]
    plan = SplitPlan(seed=seed, given=given + extra)
    if len(splits) == 1:
        (only,) = splits.values()
        splits = _carve(only, dict(FRACTIONS), seed)
        plan.given, plan.made = [], list(SPLITS)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        if "train" not in splits:
            raise SplitError(
                f"{where}: has splits {sorted(splits)} but no 'train' split to carve "
                f"{missing} from; name one split 'train' (or give a single split to cut 80/10/10)"
            )
        total = sum(len(d) for d in splits.values())
        train = splits["train"]
        shares = {"train": max(len(train) - sum(FRACTIONS[s] * total for s in missing), 0.0)}
        shares |= {s: FRACTIONS[s] * total for s in missing}
        splits = {**splits, **_carve(train, shares, seed)}
        plan.made = missing
    plan.sizes = {s: len(splits[s]) for s in (*SPLITS, *extra) if s in splits}
    check_sizes(plan.sizes, where, plan)
    return splits, plan


def check_sizes(sizes: dict[str, int], where: str = "dataset", plan: SplitPlan | None = None):
    """A `SplitError` for the first split smaller than `MIN_ROWS` (name, size, the fix). With a
    `plan`, only the splits it made are checked: a source's own splits are the user's choice."""
    for split, least in MIN_ROWS.items():
        if plan is not None and split not in plan.made:
            continue
        n = sizes.get(split, 0)
        if n < least:
            how = f"an automatic split of {sum(sizes.values())} images" if plan else "the source"
            raise SplitError(
                f"{where}: split {split!r} has {n} image(s), fewer than the {least} it needs "
                f"({how}). Add images (at least {_least_total()} for an automatic split) "
                "or give the split yourself (a 'split' column, split folders, or Karpathy "
                "'split' fields)."
            )


def _least_total() -> int:
    """The fewest images for which an automatic 80/10/10 split meets `MIN_ROWS`."""
    n = 1
    while any(k < MIN_ROWS[s] for s, k in _part_sizes(n, FRACTIONS).items()):
        n += 1
    return n
