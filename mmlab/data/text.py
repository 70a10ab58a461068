"""Tokenizer and vocabulary for captioning: lowercase words and numbers, punctuation dropped,
inner apostrophes kept ("it's"); ids 0..3 are the special tokens."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from mmlab.core.workspace import atomic_path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
FORMAT = "mmlab.vocabulary/1"


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens of `text`, punctuation dropped."""
    return _WORD.findall(text.lower())


def _flatten(captions) -> Iterable[str]:
    for item in captions:
        if isinstance(item, str):
            yield item
        else:  # a list of references per image
            yield from _flatten(item)


class Vocabulary:
    """Word <-> id mapping with `<pad> <start> <end> <unk>` and a maximum caption length."""

    def __init__(self, words: Iterable[str], max_len: int = 30):
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.itos: list[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")
        self.max_len = max_len

    pad_id, start_id, end_id, unk_id = range(4)

    @classmethod
    def build(cls, captions, min_freq: int = 1, max_len: int = 30) -> Vocabulary:
        """Words seen at least `min_freq` times in `captions` (strings, or lists of strings
        per image), most frequent first (ties alphabetical, so the result is deterministic)."""
        counts = Counter(t for c in _flatten(captions) for t in tokenize(c))
        words = sorted(
            (w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w)
        )
        return cls(words, max_len=max_len)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, max_len={self.max_len})"

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """`<start>` + at most `max_len` word ids (unknown words -> `<unk>`) + `<end>`."""
        limit = self.max_len if max_len is None else max_len
        ids = [self.stoi.get(t, self.unk_id) for t in tokenize(text)[:limit]]
        return [self.start_id, *ids, self.end_id]

    def encode_batch(self, texts: list[str], max_len: int | None = None):
        """A `[B, L]` LongTensor of encoded captions padded with `<pad>` to the longest."""
        import torch

        encoded = [self.encode(t, max_len) for t in texts]
        width = max((len(e) for e in encoded), default=2)
        batch = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return batch

    def lengths(self, batch) -> list[int]:
        """Lengths (with `<start>`/`<end>`) of the rows of an `encode_batch` tensor."""
        return (batch != self.pad_id).sum(dim=1).tolist()

    def decode(self, ids) -> str:
        """Words up to the first `<end>`; `<start>` and `<pad>` are skipped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.start_id, self.pad_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return " ".join(words)

    def decode_batch(self, batch) -> list[str]:
        return [self.decode(row) for row in batch]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "max_len": self.max_len, "itos": self.itos}

    def save(self, path) -> Path:
        """Write the vocabulary as JSON, atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict, where: str = "vocabulary") -> Vocabulary:
        if data.get("format") != FORMAT or not isinstance(data.get("itos"), list):
            raise ValueError(f"{where}: not an mmlab vocabulary (expected format {FORMAT!r})")
        if tuple(data["itos"][:4]) != SPECIALS:
            raise ValueError(f"{where}: the first tokens must be {SPECIALS}")
        return cls(data["itos"][4:], max_len=int(data["max_len"]))

    @classmethod
    def load(cls, path) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
        return cls.from_dict(data, str(path))
