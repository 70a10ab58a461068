"""Caption metrics: n-gram scores from the COCO caption toolkit, grounded object scores.

N-gram scores (`caption_scores`) are BLEU-1..4, METEOR, ROUGE-L and CIDEr-D exactly as
`pycocoevalcap` computes them, after its PTB tokenisation (lower case, punctuation removed).
Two things to know when reading them:

- CIDEr-D weighs n-grams by an IDF taken from the references of the images being scored. On
  a handful of images the IDF is noisy (on one image every n-gram has IDF 0 and CIDEr is 0), so
  small-sample CIDEr is not comparable with large-corpus figures; compare runs on the same split
  and size.
- METEOR and the PTB tokenizer run Java. An evaluation (`evaluate_many`: all beam sizes and the
  human row together) starts one Java process per tool: the tokenizer takes well under a second,
  METEOR loads its paraphrase table (seconds). Per-epoch validation should
  ask for `("bleu", "cider")` only: on 300 images with 5 references that is under a second.
  Without `java` on PATH METEOR is left out, with the reason in `CaptionEvaluation.skipped` and a
  warning, and tokenisation falls back to `python_tokenize`, a re-implementation that agrees with
  the PTB tokenizer on caption text (checked in the tests).

Grounded scores (`grounded_scores`) compare the objects a caption names with the objects in the
scene, in the spirit of CHAIR (Rohrbach et al., 2018), through a `mmlab.data.lexicons.Lexicon`:
against a synthetic scene (colours, shapes, sizes, places) or against a list of object names
(COCO instance categories, or the objects the references mention). Retrieval metrics (Recall@K, ranks) live
in `mmlab.retrieval.metrics`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# The parser reads the words of `mmlab.data.lexicons`; its names stay importable from here.
from mmlab.data.lexicons import Mention, parse_caption, phrase_table
from mmlab.data.lexicons import Relation as Relation
from mmlab.data.world import synthetic_world

NGRAM_METRICS = ("bleu", "meteor", "rouge_l", "cider")


# --------------------------------------------------------------------------- tokenisation
def java_available() -> bool:
    return shutil.which("java") is not None


def _toolkit_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__))).resolve()  # a namespace package


def _ptb_punctuation() -> frozenset[str]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    return frozenset(PUNCTUATIONS)


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """The toolkit's tokenisation: Stanford PTBTokenizer (Java, one process), punctuation dropped.

    Same command and filter as `pycocoevalcap.tokenizer.PTBTokenizer`, but the input goes through
    a temporary file outside the (possibly read-only) package folder and Java's chatter is kept off
    the console.
    """
    jar = _toolkit_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [s.replace("\n", " ").replace("\r", " ") for s in sentences]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as tmp:
        tmp.write("\n".join(lines))
        tmp.flush()
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines"]
        cmd += ["-lowerCase", tmp.name]
        done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"PTBTokenizer failed ({' '.join(cmd)}): {done.stderr.decode()[-500:]}")
    out = done.stdout.decode("utf-8").split("\n")[: len(lines)]
    out += [""] * (len(lines) - len(out))  # trailing empty captions
    punct = _ptb_punctuation()
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punct) for line in out]


# Rules of the PTB tokenizer that matter once punctuation tokens are dropped: brackets become
# -lrb- style tokens (which survive the toolkit's upper-case filter), clitics split off, and
# punctuation splits from words except inside numbers (3.5, 1,000) and abbreviations (u.s.).
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
_TOKEN = re.compile(
    r"\.\.\.|--|[a-z](?:\.[a-z])+\.|\$|%|&"  # ellipsis, dash, u.s. / p.m., symbols
    r"|\b(?:mr|mrs|ms|dr|prof|st|jr|sr|vs|etc|inc|ltd|corp|mt)\."  # common abbreviations
    r"|\d+(?:[.,:/]\d+)*"  # numbers keep their inner punctuation
    r"|n't|'(?:s|re|ve|ll|d|m)\b"  # clitics (split off below)
    r"|[^\s.,;:?!\"'`$%&()\[\]{}]+(?:['.][^\s.,;:?!\"'`$%&()\[\]{}]+)*"  # words (o'clock, e.g)
    r"|\S"
)
_CLITIC = re.compile(r"(\w)(n't|'(?:s|re|ve|ll|d|m))\b")


def python_tokenize(sentences: Sequence[str]) -> list[str]:
    """A Java-free equivalent of `ptb_tokenize` for caption text (tested against it)."""
    punct = _ptb_punctuation() | {'"', "`"}
    out = []
    for sentence in sentences:
        s = _CLITIC.sub(r"\1 \2", sentence.lower().replace("\n", " "))
        s = re.sub(r"\b(can)('t)\b", r"ca n\2", s)
        tokens = []
        for tok in _TOKEN.findall(s):
            tok = _BRACKETS.get(tok, tok)
            tokens.extend(_SPLIT_WORDS.get(tok, tok).split())
        out.append(" ".join(t for t in tokens if t not in punct))
    return out


TOKENIZERS: dict[str, Callable[[Sequence[str]], list[str]]] = {
    "ptb": ptb_tokenize,
    "python": python_tokenize,
}


def resolve_tokenizer(name: str = "auto") -> str:
    """`auto` is the toolkit's PTB tokenizer where Java exists, else the Python equivalent."""
    if name == "auto":
        return "ptb" if java_available() else "python"
    if name not in TOKENIZERS:
        raise KeyError(f"unknown tokenizer {name!r}; valid: auto, {', '.join(TOKENIZERS)}")
    return name


# --------------------------------------------------------------------------- n-gram scorers
# Each scorer takes tokenised {id: [refs]} and {id: [hypothesis]} and returns
# (corpus scores, per-image scores), both keyed by metric name.
Scored = tuple[dict[str, float], dict[str, np.ndarray]]


def _bleu(gts, res) -> Scored:
    from pycocoevalcap.bleu.bleu import Bleu

    corpus, per_image = Bleu(4).compute_score(gts, res, verbose=0)
    names = [f"bleu{n}" for n in range(1, 5)]
    scores = {k: float(v) for k, v in zip(names, corpus, strict=True)}
    return scores, {k: np.asarray(v) for k, v in zip(names, per_image, strict=True)}


def _rouge_l(gts, res) -> Scored:
    from pycocoevalcap.rouge.rouge import Rouge

    corpus, per_image = Rouge().compute_score(gts, res)
    return {"rouge_l": float(corpus)}, {"rouge_l": np.asarray(per_image)}


def _cider(gts, res) -> Scored:
    from pycocoevalcap.cider.cider import Cider  # CIDEr-D: clipped counts, length penalty

    corpus, per_image = Cider().compute_score(gts, res)
    return {"cider": float(corpus)}, {"cider": np.asarray(per_image)}


class Meteor:
    """METEOR 1.5 through the toolkit's jar; one Java process serves many evaluations.

    Starting it costs seconds (it loads a paraphrase table), so `evaluate_many` opens one process
    for all its prediction sets. Same protocol as `pycocoevalcap.meteor.Meteor`.
    """

    def __init__(self):
        jar = _toolkit_dir() / "meteor" / "meteor-1.5.jar"
        self.cmd = ["java", "-XX:+UseSerialGC", "-Xmx2G", "-jar", jar.name, "-", "-", "-stdio"]
        self.cmd += ["-l", "en", "-norm"]
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc = subprocess.Popen(self.cmd, cwd=jar.parent, encoding="utf-8", **pipes)

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> str:
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"METEOR ({' '.join(self.cmd)}) exited with code {self.proc.poll()}")
        return answer.strip()

    def __call__(self, gts, res) -> Scored:
        stats = []
        for key in gts:
            hyp = res[key][0].replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(["SCORE", *gts[key], hyp]))
            stats.append(self._receive())
        self._send("EVAL ||| " + " ||| ".join(stats))
        per_image = [float(self._receive()) for _ in stats]
        return {"meteor": float(self._receive())}, {"meteor": np.asarray(per_image)}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Scorer factories: each evaluation call builds its scorers once (METEOR's Java process).
SCORERS: dict[str, Callable[[], Callable[[dict, dict], Scored]]] = {
    "bleu": lambda: _bleu,
    "meteor": Meteor,  # started once per `evaluate_many` call, then called per set
    "rouge_l": lambda: _rouge_l,
    "cider": lambda: _cider,
}
NEEDS_JAVA = frozenset({"meteor"})
MISSING_JAVA = "java not found on PATH (pycocoevalcap runs METEOR 1.5 in Java)"


# --------------------------------------------------------------------------- caption scores
@dataclass
class CaptionEvaluation:
    """Corpus scores, one row of per-image scores per id, and what was left out and why."""

    scores: dict[str, float]
    per_image: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)
    tokenizer: str = "ptb"

    def notes(self) -> str:
        """One line for a log or an MLflow tag: tokenizer used and metrics left out."""
        left_out = "; ".join(f"{name} left out: {why}" for name, why in self.skipped.items())
        return f"tokenizer={self.tokenizer}" + (f"; {left_out}" if left_out else "")


def _check_inputs(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]):
    if not predictions:
        raise ValueError("predictions is empty: nothing to score")
    missing = [k for k in predictions if k not in references]
    if missing:
        raise KeyError(f"no references for {len(missing)} predicted id(s), e.g. {missing[:5]}")
    for key, caption in predictions.items():
        if not isinstance(caption, str):
            raise TypeError(f"prediction for {key!r} must be a str, got {type(caption).__name__}")
        refs = references[key]
        if isinstance(refs, str) or not refs:
            raise ValueError(
                f"references for {key!r} must be a non-empty list of str, got {refs!r}"
            )


def _tokenized(jobs: Mapping[str, tuple[Mapping, Mapping]], tokenizer: str) -> dict:
    """Tokenise every reference and prediction of every job in one call (one Java start)."""
    flat = []
    for references, predictions in jobs.values():
        flat += [predictions[k] for k in predictions]
        flat += [r for k in predictions for r in references[k]]
    tokens = iter(TOKENIZERS[tokenizer](flat))
    out = {}
    for name, (references, predictions) in jobs.items():
        res = {k: [next(tokens)] for k in predictions}
        gts = {k: [next(tokens) for _ in references[k]] for k in predictions}
        out[name] = (gts, res)
    return out


def _check_metrics(metrics: Iterable[str]) -> list[str]:
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in SCORERS]
    if unknown:
        raise KeyError(f"unknown caption metric(s) {unknown}; valid: {', '.join(SCORERS)}")
    return metrics


def evaluate_many(
    jobs: Mapping[str, tuple[Mapping[str, Sequence[str]], Mapping[str, str]]],
    metrics: Iterable[str] = NGRAM_METRICS,
    tokenizer: str = "auto",
) -> dict[str, CaptionEvaluation]:
    """Several evaluations `{name: (references, predictions)}` sharing one tokenizer call and one
    METEOR process (e.g. every beam size plus the human-agreement row)."""
    metrics = _check_metrics(metrics)
    for references, predictions in jobs.values():
        _check_inputs(references, predictions)
    tokenizer = resolve_tokenizer(tokenizer)
    tokenized = _tokenized(jobs, tokenizer)
    skipped = {m: MISSING_JAVA for m in metrics if m in NEEDS_JAVA and not java_available()}
    for name, why in skipped.items():
        warnings.warn(f"{name} left out: {why}", RuntimeWarning, stacklevel=3)
    scorers = {m: SCORERS[m]() for m in metrics if m not in skipped}
    try:
        out = {}
        for name, (gts, res) in tokenized.items():
            scores: dict[str, float] = {}
            per_image: dict[str, np.ndarray] = {}
            for scorer in scorers.values():
                corpus, images = scorer(gts, res)
                scores.update(corpus)
                per_image.update(images)
            table = pd.DataFrame(per_image, index=pd.Index(list(res), name="id"))
            out[name] = CaptionEvaluation(scores, table, dict(skipped), tokenizer)
        return out
    finally:
        for scorer in scorers.values():
            if hasattr(scorer, "close"):
                scorer.close()


def evaluate_captions(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    metrics: Iterable[str] = NGRAM_METRICS,
    tokenizer: str = "auto",
) -> CaptionEvaluation:
    """Score `predictions` (id -> caption) against `references` (id -> captions) with the toolkit.

    Only the predicted ids are scored (references may hold more). Metrics needing Java are left
    out, with a warning and a reason in `.skipped`, when Java is missing.
    """
    return evaluate_many({"": (references, predictions)}, metrics, tokenizer)[""]


def caption_scores(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    metrics: Iterable[str] = NGRAM_METRICS,
    per_image: bool = False,
    tokenizer: str = "auto",
):
    """Corpus scores `{bleu1..bleu4, meteor, rouge_l, cider}`; with `per_image=True` also a
    DataFrame of per-image scores indexed by id: `(scores, per_image)`.

    For per-epoch validation pass `metrics=("bleu", "cider")`: no METEOR Java start-up.
    """
    evaluation = evaluate_captions(references, predictions, metrics, tokenizer)
    return (evaluation.scores, evaluation.per_image) if per_image else evaluation.scores


def human_agreement(
    references: Mapping[str, Sequence[str]],
    metrics: Iterable[str] = NGRAM_METRICS,
    tokenizer: str = "auto",
) -> CaptionEvaluation:
    """Each reference scored against the image's other references: see `leave_one_out`."""
    return evaluate_captions(*leave_one_out(references), metrics, tokenizer)


def leave_one_out(
    references: Mapping[str, Sequence[str]],
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(references, predictions) that score each reference against the image's other ones.

    The context every caption score needs: what a human-written caption gets. All held-out
    references form one evaluation (one Java start), as pseudo-images `id#j`; CIDEr's IDF
    then comes from that expanded corpus, whose document frequencies scale with it. Images with a
    single reference are skipped (nothing to compare against).
    """
    held_out: dict[str, str] = {}
    others: dict[str, list[str]] = {}
    for key, refs in references.items():
        if len(refs) < 2:
            continue
        for j, ref in enumerate(refs):
            held_out[f"{key}#{j}"] = ref
            others[f"{key}#{j}"] = [r for i, r in enumerate(refs) if i != j]
    if not held_out:
        raise ValueError("human agreement needs images with at least two references each")
    return others, held_out


# --------------------------------------------------------------------------- caption statistics
def caption_lengths(captions: Iterable[str]) -> np.ndarray:
    """Words per caption, counted after the toolkit's tokenisation (Java-free equivalent)."""
    return np.array([len(t.split()) for t in python_tokenize(list(captions))], dtype=int)


def vocabulary_use(captions: Iterable[str], max_n: int = 4) -> dict[str, float]:
    """How varied the wording is: `distinct_n` (distinct n-grams over all captions) and
    `distinct_n_ratio` (distinct / all n-grams; 1 = nothing repeated) for n = 1..max_n."""
    tokens = [t.split() for t in python_tokenize(list(captions))]
    out: dict[str, float] = {}
    for n in range(1, max_n + 1):
        grams = [tuple(words[i : i + n]) for words in tokens for i in range(len(words) - n + 1)]
        out[f"distinct_{n}"] = float(len(set(grams)))
        out[f"distinct_{n}_ratio"] = _share(len(set(grams)), len(grams))
    return out


# --------------------------------------------------------------------------- grounded scores
# Captions are read by `mmlab.data.lexicons.parse_caption`: an object is its colour and shape
# (unique within a synthetic scene); size is an attribute checked on named objects.


def _error_kind(mention: Mention, scene: Sequence[Mapping]) -> str | None:
    """Which attribute makes a mention wrong: None (right), size, colour, shape or object."""
    same = [o for o in scene if (o["colour"], o["shape"]) == mention.look]
    if same:
        return None if mention.size in (None, same[0]["size"]) else "size"
    if any(o["shape"] == mention.shape for o in scene):
        return "colour"
    if any(o["colour"] == mention.colour for o in scene):
        return "shape"
    return "object"  # neither its colour nor its shape is in the scene


def _objects_row(caption: str, truth: Sequence[str], lexicon) -> dict[str, float]:
    """Counts against a list of object names: each distinct object a caption names counts
    once; attributes and relations have no ground truth here (NaN)."""
    if not hasattr(lexicon, "objects_in"):
        raise TypeError("grounding against object names needs a mmlab.data.lexicons.Lexicon")
    truth = {lexicon.canonical(t) for t in truth}
    named = set(lexicon.objects_in(caption))
    nan = float("nan")
    return {
        "mentions": len(named),
        "hallucinated": len(named - truth),
        "scene_objects": len(truth),
        "named_objects": len(named & truth),
        **{f"{kind}_errors": nan for kind in ("colour", "shape", "size", "object")},
        "relations": nan,
        "relation_errors": nan,
    }


def _grounded_row(caption: str, scene: Sequence[Mapping], lexicon) -> dict[str, int]:
    # a scene of object dicts is the synthetic world's: its geometry says the true relation
    true_relation = synthetic_world().relation
    mentions, relations = parse_caption(caption, lexicon)
    errors = [_error_kind(m, scene) for m in mentions]
    hallucinated = sum(e not in (None, "size") for e in errors)
    named = {m.look for m, e in zip(mentions, errors, strict=True) if e in (None, "size")}
    by_look = {(o["colour"], o["shape"]): o for o in scene}
    checkable = [r for r in relations if {r.first.look, r.second.look} <= named]
    wrong_relations = sum(
        true_relation(by_look[r.first.look], by_look[r.second.look]) != r.relation
        for r in checkable
    )
    return {
        "mentions": len(mentions),
        "hallucinated": hallucinated,
        "scene_objects": len(scene),
        "named_objects": len(named),
        **{f"{kind}_errors": errors.count(kind) for kind in ("colour", "shape", "size", "object")},
        "relations": len(checkable),
        "relation_errors": wrong_relations,
    }


def _is_names(value) -> bool:
    """Whether ground truth is a list of object names (not a synthetic scene)."""
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _scene(key: str, scene) -> list[Mapping]:
    """A scene as a list of object dicts (`datasets` may hand a dict of columns instead)."""
    if isinstance(scene, Mapping) and all(isinstance(v, list) for v in scene.values()):
        scene = [
            dict(zip(scene, values, strict=True)) for values in zip(*scene.values(), strict=True)
        ]
    if not isinstance(scene, (list, tuple)):
        raise TypeError(
            f"objects[{key!r}] must be a list of object dicts, got {type(scene).__name__}"
        )
    for obj in scene:
        missing = {"colour", "shape", "size", "x", "y"} - set(obj)
        if missing:
            raise ValueError(f"objects[{key!r}] has an object without {sorted(missing)}: {obj!r}")
    return list(scene)


def grounded_table(
    predictions: Mapping[str, str], objects: Mapping[str, Sequence], lexicon=None
) -> pd.DataFrame:
    """Per-caption counts: mentions, hallucinated ones, named scene objects, errors by kind.

    `objects[id]` is a synthetic scene (object dicts) or a list of object names; `lexicon` a
    `mmlab.data.lexicons.Lexicon` (default: the synthetic one) or a {surface: (kind, value)}
    table."""
    missing = [k for k in predictions if k not in objects]
    if missing:
        raise KeyError(f"no scene objects for {len(missing)} predicted id(s), e.g. {missing[:5]}")
    lexicon = synthetic_world().lexicon if lexicon is None else lexicon
    rows = {}
    for key, caption in predictions.items():
        truth = objects[key]
        if _is_names(truth):
            rows[key] = _objects_row(caption, truth, lexicon)
        else:
            rows[key] = _grounded_row(caption, _scene(key, truth), phrase_table(lexicon))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("id")


def _share(part: float, whole: float) -> float:
    return float(part / whole) if whole else float("nan")


def grounded_scores(
    predictions: Mapping[str, str],
    objects: Mapping[str, Sequence],
    lexicon=None,
    per_image: bool = False,
):
    """CHAIR-style scores of captions against the objects in each scene (corpus totals).

    - `chair_i`: named objects (colour + shape) not in the scene / objects named;
      `object_precision` = 1 - `chair_i`.
    - `chair_s`: captions naming at least one object not in the scene / captions.
    - `object_recall`: scene objects the caption names / scene objects.
    - `colour_error`, `shape_error`, `size_error`: mentions wrong in just that attribute (the
      scene has the object with another colour / shape / size) / objects named; a mention whose
      colour and shape are both absent counts in `chair_i` only. A wrong size is not a
      hallucination (the object is there).
    - `relation_error`: stated relations between two objects that are in the scene, which are
      wrong / such relations.
    A share with nothing to count (no mention at all) is NaN. Against object names (COCO
    categories or the objects the references mention) an object is its canonical name (a
    synonym or plural counts as it), each named once per caption, and the attribute and relation
    shares are NaN. With `per_image=True` also returns the per-caption counts table
    (`grounded_table`).
    """
    table = grounded_table(predictions, objects, lexicon)
    total = table.sum()
    mentions = total["mentions"]
    scene_mentions = table.loc[table["colour_errors"].notna(), "mentions"].sum()
    scores = {
        "object_precision": _share(mentions - total["hallucinated"], mentions),
        "object_recall": _share(total["named_objects"], total["scene_objects"]),
        "chair_i": _share(total["hallucinated"], mentions),
        "chair_s": _share((table["hallucinated"] > 0).sum(), len(table)),
        **{
            f"{k}_error": _share(total[f"{k}_errors"], scene_mentions)
            for k in ("colour", "shape", "size")
        },
        "relation_error": _share(total["relation_errors"], total["relations"]),
    }
    return (scores, table) if per_image else scores


# --------------------------------------------------------------------------- reports
HUMAN = "human"


@dataclass
class EvaluationReport:
    """Scores of several prediction sets (e.g. one per beam size) and of the human references.

    `table`: a row per set (plus `"human"`: each reference scored against the image's others),
    columns n-gram scores, grounded scores, `mean_length` and distinct n-grams. `per_image`: per
    set, the per-image n-gram scores joined with the grounded counts. `notes`: tokenizer used and
    metrics left out (for the log and an MLflow tag).
    """

    table: pd.DataFrame
    per_image: dict
    notes: str

    def row(self, name, prefix: str = "") -> dict[str, float]:
        """One set's scores as `{prefix + metric: value}`, NaN (nothing to count) left out."""
        values = self.table.loc[name].dropna()
        return {f"{prefix}{k}": float(v) for k, v in values.items()}


def evaluate_sets(
    references: Mapping[str, Sequence[str]],
    prediction_sets: Mapping,
    objects: Mapping[str, Sequence] | None = None,
    metrics: Iterable[str] = NGRAM_METRICS,
    tokenizer: str = "auto",
    human: bool = True,
    lexicon=None,
) -> EvaluationReport:
    """Score every `{name: {id: caption}}` set against `references` in one toolkit pass (one
    tokenizer and one METEOR start), with grounded scores where `objects` (id -> scene or object
    names, see `mmlab.data.lexicons.ground_truth`) is given, read through `lexicon` (default:
    the synthetic one), and the leave-one-out human row unless `human=False`."""
    jobs = {name: (references, predictions) for name, predictions in prediction_sets.items()}
    if human:
        jobs[HUMAN] = leave_one_out(references)
    evaluations = evaluate_many(jobs, metrics, tokenizer)
    rows, per_image = {}, {}
    for name, evaluation in evaluations.items():
        predictions = jobs[name][1]
        row, table = dict(evaluation.scores), evaluation.per_image
        if objects is not None:
            image_of = (lambda k: k.rsplit("#", 1)[0]) if name == HUMAN else (lambda k: k)
            scenes = {k: objects[image_of(k)] for k in predictions}
            grounded, counts = grounded_scores(predictions, scenes, lexicon, per_image=True)
            row.update(grounded)
            table = table.join(counts)
        # one caption per image, as for a model: the human row's wording is the first reference's
        captions = [c for k, c in predictions.items() if name != HUMAN or k.endswith("#0")]
        row["mean_length"] = float(caption_lengths(captions).mean())
        row.update(vocabulary_use(captions))
        rows[name], per_image[name] = row, table
    notes = next(iter(evaluations.values())).notes()
    return EvaluationReport(pd.DataFrame.from_dict(rows, orient="index"), per_image, notes)
