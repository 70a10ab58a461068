"""Match pairs for any caption dataset: does this caption describe this image?
Positives are an image's own captions. Negatives are `other_image` (easy: another image's
caption) or hard, changing one `colour`, `count`, `object` or `spatial` word (to its
opposite). Replacements come from `NegativeWords` restricted to the training captions' words
(the whole list when fewer than two remain); `match_kind` records the kind."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mmlab.data.lexicons import COCO_SYNONYMS, COLOUR_WORDS, pairs, plural, words

MATCH_COLUMNS = ("match_caption", "match_label", "match_kind")
EASY = "other_image"
HARD_KINDS = ("colour", "count", "object", "spatial")

# Nouns common in photo captions that are no COCO category, to widen the object list.
SCENE_NOUNS = words(
    """
    tree building wall sky field road street beach water flower plate box flag hat helmet shirt
    window door rock stone coin ball tower camera bag glass house mountain snow grass fence sign
    light leaf eye face
    """
)
COUNT_WORDS = words("one two three four five six seven eight nine ten several many")
SPATIAL_OPPOSITES = pairs(
    """
    left: right, above: below, over: under, top: bottom, front: behind, inside: outside,
    up: down, near: far, on: under, in: outside, beside: behind
    """
)


def _single_words(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({n for n in names if " " not in n}))


@dataclass(frozen=True)
class NegativeWords:
    """The word list of each kind of hard negative; pass your own to `build_swapper`."""

    colour: tuple[str, ...] = COLOUR_WORDS
    count: tuple[str, ...] = COUNT_WORDS
    object: tuple[str, ...] = field(  # colour words ("orange") are left to the colour kind
        default_factory=lambda: tuple(
            w
            for w in _single_words([w for c, s in COCO_SYNONYMS.items() for w in (c, *s)])
            + SCENE_NOUNS
            if w not in COLOUR_WORDS
        )
    )
    spatial: Mapping[str, str] = field(default_factory=lambda: dict(SPATIAL_OPPOSITES))

    def spatial_pairs(self) -> dict[str, str]:
        """Each spatial word -> its opposite, both ways."""
        return {**{b: a for a, b in self.spatial.items()}, **self.spatial}


_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def tokens(caption: str) -> list[str]:
    """Lower-case words and punctuation marks."""
    return _TOKEN.findall(caption.lower())


def normalise(caption: str) -> str:
    """The form every match caption takes (positives too), so case or spacing tells nothing."""
    return " ".join(tokens(caption))


@dataclass
class Swapper:
    """Replaces one word of a kind in a caption; `choices[kind]` are the candidate words."""

    choices: dict[str, tuple[str, ...]]
    opposites: dict[str, str]
    singular: dict[str, str]  # plural object noun -> singular

    def positions(self, words: Sequence[str], kind: str) -> list[int]:
        if kind == "spatial":
            return [i for i, w in enumerate(words) if w in self.opposites]
        if kind == "object":
            return [i for i, w in enumerate(words) if self.singular.get(w, w) in self._nouns]
        return [i for i, w in enumerate(words) if w in self.choices[kind]]

    @property
    def _nouns(self) -> frozenset[str]:
        return frozenset(self.choices["object"])

    def kinds_in(self, caption: str) -> list[str]:
        words = tokens(caption)
        return [k for k in HARD_KINDS if self.positions(words, k)]

    def swap(self, caption: str, kind: str, rng: np.random.Generator) -> str | None:
        """The caption with one word of `kind` changed (None when it has none)."""
        words = tokens(caption)
        where = self.positions(words, kind)
        if not where:
            return None
        i = where[int(rng.integers(len(where)))]
        word = words[i]
        if kind == "spatial":
            new = self.opposites[word]
        else:
            base = self.singular.get(word, word) if kind == "object" else word
            options = [w for w in self.choices[kind] if w != base]
            if not options:
                return None
            new = options[int(rng.integers(len(options)))]
            if kind == "object" and base != word:  # keep the number: coins -> stones
                new = plural(new)
        words[i] = new
        if i > 0 and words[i - 1] in ("a", "an"):  # keep the article right: an orange -> a cup
            words[i - 1] = "an" if new[0] in "aeiou" else "a"
        return " ".join(words)


def build_swapper(captions: Iterable[str], words: NegativeWords | None = None) -> Swapper:
    """A `Swapper` whose candidate words are the kind lists' words found in `captions` (the
    training captions); a kind that finds fewer than two keeps its whole list."""
    words = words or NegativeWords()
    seen = {w for c in captions for w in tokens(c)}
    singular = {plural(n): n for n in words.object if plural(n) != n}
    seen_nouns = {singular.get(w, w) for w in seen}
    choices = {}
    for kind in ("colour", "count", "object"):
        listed = tuple(getattr(words, kind))
        found = tuple(w for w in listed if w in (seen_nouns if kind == "object" else seen))
        choices[kind] = found if len(found) >= 2 else listed
    return Swapper(choices, words.spatial_pairs(), singular)


def _rng(ident: str, seed: int, salt: str = "") -> np.random.Generator:
    digest = hashlib.blake2b(f"{salt}:{ident}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def match_pair(
    captions: Sequence[str], others: Sequence[str], swapper: Swapper, rng: np.random.Generator
) -> tuple[str, int, str]:
    """(caption, label, kind): half the time one of the image's captions (`positive`), else a
    negative of a kind drawn uniformly from those its captions allow (`other_image` always)."""
    caption = captions[int(rng.integers(len(captions)))]
    if rng.random() < 0.5 or not (captions and others):
        return normalise(caption), 1, "positive"
    kinds = [EASY] + swapper.kinds_in(caption)
    kind = kinds[int(rng.integers(len(kinds)))]
    changed = None if kind == EASY else swapper.swap(caption, kind, rng)
    if changed is None:
        return normalise(others[int(rng.integers(len(others)))]), 0, EASY
    return changed, 0, kind


def _pairs_for_split(split, swapper: Swapper, seed: int, k: int, salt: str):
    """k match pairs per row; other images' captions are the split's, the row's own left out."""
    ids = [str(i) for i in split["id"]]
    captions = [list(c) for c in split["captions"]]
    flat = [(row, c) for row, cs in enumerate(captions) for c in cs]
    out = []
    for row, ident in enumerate(ids):
        rng = _rng(ident, seed, salt)
        pairs = []
        for _ in range(k):
            others = []
            for _ in range(8):  # a few draws find another image's caption in any real split
                r, c = flat[int(rng.integers(len(flat)))]
                if r != row:
                    others = [c]
                    break
            if not captions[row]:
                raise ValueError(f"image {ident!r} has no caption: a match pair needs one")
            pairs.append(match_pair(captions[row], others, swapper, rng))
        out.append(pairs)
    return out


def add_match_columns(ds, seed: int = 0, words: NegativeWords | None = None):
    """`ds` with `match_caption`, `match_label`, `match_kind` added where missing: one pair per
    image, deterministic in (image id, seed)."""
    import datasets

    from mmlab.data.loaders import _quiet

    for name, split in ds.items():
        if "captions" not in split.column_names:
            raise ValueError(
                f"the match task needs a 'captions' column; split {name!r} has {split.column_names}"
            )
    swapper = build_swapper((c for cs in ds["train"]["captions"] for c in cs), words)
    out = {}
    for name, split in ds.items():
        if all(c in split.column_names for c in MATCH_COLUMNS):
            out[name] = split
            continue
        pairs = [p[0] for p in _pairs_for_split(split, swapper, seed, 1, name)]
        with _quiet():  # no progress bar per added column
            for column, values in zip(MATCH_COLUMNS, zip(*pairs, strict=True), strict=True):
                split = split.add_column(column, list(values))
        out[name] = split
    return datasets.DatasetDict(out) if isinstance(ds, datasets.DatasetDict) else out


def more_match_pairs(train, k: int, seed: int = 0, words: NegativeWords | None = None):
    """`k` further (caption, label, kind) pairs per training row, drawn like the match
    columns (with another stream of the seed): more training pairs per image."""
    swapper = build_swapper((c for cs in train["captions"] for c in cs), words)
    return _pairs_for_split(train, swapper, seed, k, "extra")
