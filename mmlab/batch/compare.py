"""Compare batches of runs (notebook 00, `mmlab compare`): each stage's metrics with t-intervals
over seeds, and those that moved beyond them; a metric measured once is shown, never flagged.
A batch is its name (the newest FINISHED run of each execution, cached ones too) or one
invocation's id (the runs it executed)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from mmlab import tracking
from mmlab.core import stats, workspace

REPORT_NOTEBOOK = "00_compare_runs"
BATCH_TAG, BATCH_ID_TAG = "mmlab.batch", "mmlab.batch_id"
SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
# Costs follow the machine's load, not what was learnt: never compared across batches.
COST = re.compile(r"seconds|per_s|latency|n_parameters|epoch|^dim\.|memory|bytes|_size$")
OBSERVATION_COLUMNS = ["section", "key", "metric", "batch", "value"]
CHANGE_COLUMNS = ["section", "key", "metric", "batch", "baseline", "delta", "verdict"]


class BatchNotFound(LookupError):
    """A batch name or id with no finished runs in the store; the message lists the known ones."""


@dataclass(frozen=True)
class Batch:
    """The runs (one row per stage execution, as `mlflow.search_runs` gives them) of a batch."""

    label: str  # the name or id as the user gave it
    kind: str  # "name" or "id"
    runs: pd.DataFrame

    def describe(self) -> dict:
        runs = self.runs
        commits = {str(c)[:10] for c in _column(runs, "mmlab.git_commit")}
        return {
            "batch": self.label,
            "by": self.kind,
            "batch ids": ", ".join(sorted(runs[f"tags.{BATCH_ID_TAG}"].unique())),
            "runs": len(runs),
            "stages": ", ".join(sorted(runs["tags.mmlab.stage"].unique())),
            "started": str(runs["start_time"].min())[:19],
            "git commit": ", ".join(sorted(commits)),
        }


def _search(filter_string: str, **kwargs) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking.ensure_store())
    return tracking.retry(
        mlflow.search_runs, filter_string=filter_string, search_all_experiments=True, **kwargs
    )


def _column(runs: pd.DataFrame, tag: str) -> pd.Series:
    name = f"tags.{tag}"
    return runs[name].fillna("") if name in runs else pd.Series([""] * len(runs), index=runs.index)


def _stage_runs(tag: str, value: str) -> pd.DataFrame:
    """FINISHED stage runs whose `tag` is `value`, newest first, the report's own left out."""
    runs = _search(
        f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    if runs.empty:
        return runs
    report = _column(runs, "mmlab.notebook") == REPORT_NOTEBOOK
    return runs[(_column(runs, "mmlab.stage") != "") & ~report].reset_index(drop=True)


def known_batches(limit: int = 8) -> tuple[list[str], list[str]]:
    """(batch names, newest batch ids) in the store, for error messages and defaults."""
    runs = _search(f"tags.`{BATCH_ID_TAG}` != ''", order_by=["attributes.start_time DESC"])
    if runs.empty:
        return [], []
    runs = runs[_column(runs, "mmlab.notebook") != REPORT_NOTEBOOK]
    names = list(dict.fromkeys(_column(runs, BATCH_TAG)))
    ids = list(dict.fromkeys(_column(runs, BATCH_ID_TAG)))
    return names[:limit], ids[:limit]


def resolve_one(spec: str) -> Batch:
    """A batch id (exact `mmlab.batch_id`) or name (newest finished run of each execution)."""
    if not SAFE.match(spec):
        raise BatchNotFound(f"batch {spec!r}: expected a batch name or id (letters, digits, ._:-)")
    runs = _stage_runs(BATCH_ID_TAG, spec)
    if not runs.empty:
        return Batch(spec, "id", runs)
    runs = _stage_runs(BATCH_TAG, spec)
    if not runs.empty:
        execution = _column(runs, "mmlab.notebook") + "/" + _column(runs, "mmlab.execution")
        return Batch(spec, "name", runs[~execution.duplicated()].reset_index(drop=True))
    names, ids = known_batches()
    known = "the store has no batch runs yet: run one with `mmlab run params/smoke.yaml`"
    if names:
        known = f"batch names: {', '.join(names)}; newest ids: {', '.join(ids)}"
    raise BatchNotFound(
        f"batch {spec!r}: no FINISHED runs tagged {BATCH_TAG} or {BATCH_ID_TAG} = {spec!r} "
        f"in {tracking.tracking_uri()} ({known})"
    )


def resolve(specs: Iterable[str]) -> list[Batch]:
    """Batches by name or id, in the order given; none given: the two newest batch ids."""
    specs = list(specs)
    if not specs:
        specs = known_batches(limit=2)[1][::-1]
        if not specs:
            raise BatchNotFound(f"no batch runs in {tracking.tracking_uri()}: run a batch first")
    return [resolve_one(spec) for spec in specs]


def _metrics(row: pd.Series) -> dict[str, float]:
    """The row's quality metrics (costs left out), NaN dropped."""
    out = {}
    for column, value in row.items():
        if column.startswith("metrics.") and not pd.isna(value):
            name = column[len("metrics.") :]
            if not COST.search(name):
                out[name] = float(value)
    return out


def _config_key(row: pd.Series) -> str:
    """The execution's grid combination without its seed: runs differing by seed pool together."""
    execution, stage = row.get("tags.mmlab.execution"), row.get("tags.mmlab.stage")
    if not isinstance(execution, str) or execution == stage:
        return ""
    return ",".join(p for p in execution.split(",") if not p.startswith("seed="))


def _with_config(row: pd.Series, key: str) -> str:
    config = _config_key(row)
    return f"{config} · {key}" if config else key


def _children(parent: pd.Series) -> pd.DataFrame:
    return _search(f"tags.mlflow.parentRunId = '{parent['run_id']}'")


def read_fusion(runs: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Notebook 02: each method's test metrics over its seeds (the nested method x seed runs)."""
    rows = []
    for _, parent in runs.iterrows():
        for _, child in _children(parent).iterrows():
            method = child.get("tags.fusion_method") or _strip_seed(child["tags.mlflow.runName"])
            target = child.get("tags.fusion_target")  # the label task: a method per target
            method = f"{target}:{method}" if isinstance(target, str) and target else method
            rows += [
                (_with_config(parent, method), m, v)
                for m, v in _metrics(child).items()
                if m.startswith("test_")
            ]
    return rows


def read_features(runs: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Notebook 01: linear-probe accuracy per encoder (`probe.<target>.<modality>.<encoder>`)."""
    rows = []
    for _, run in runs.iterrows():
        for name, value in _metrics(run).items():
            parts = name.split(".")
            if parts[0] == "probe" and len(parts) >= 4:
                encoder = ".".join(parts[2:])
                rows.append((_with_config(run, encoder), f"probe {parts[1]}", value))
    return rows


def _decoder(run: pd.Series) -> str:
    """The decoder of a captioning run (03), or of the run whose model an evaluation (04) used."""
    decoder = run.get("params.decoder")
    if isinstance(decoder, str) and decoder:
        return decoder
    uri = run.get("params.model_uri")
    found = re.match(r"runs:/([0-9a-f]+)/", uri) if isinstance(uri, str) else None
    if found:
        trained = tracking.retry(tracking.client().get_run, found.group(1))
        return trained.data.params.get("decoder", "model " + found.group(1)[:8])
    return "model"


def read_captions(runs: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Notebooks 03 and 04: test metrics by decoder and beam size (logged with the beam as the
    step), the human agreement row, and each run's other quality metrics."""
    rows = []
    for _, run in runs.iterrows():
        decoder = _decoder(run)
        for name, value in _metrics(run).items():
            if name.startswith("test_") and not name.endswith("_best"):
                history = tracking.client().get_metric_history
                for point in tracking.retry(history, run["run_id"], name):
                    key = f"{decoder} beam {point.step}"
                    rows.append((_with_config(run, key), name[len("test_") :], point.value))
            elif name.startswith("human_"):
                rows.append((_with_config(run, "human"), name[len("human_") :], value))
            else:
                rows.append((_with_config(run, decoder), name, value))
    return rows


def read_generic(runs: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Any other notebook (retrieval, ...): every quality metric, grouped by its name's prefix
    (`recall_at_1/text_to_image` -> `recall`); nested runs pool over their seeds."""
    rows = []
    for _, run in runs.iterrows():
        for _, child in _children(run).iterrows():
            name = _strip_seed(child.get("tags.mlflow.runName") or "child")
            rows += [
                (_with_config(run, f"{name} · {_prefix(m)}"), m, v)
                for m, v in _metrics(child).items()
            ]
        rows += [(_with_config(run, _prefix(m)), m, v) for m, v in _metrics(run).items()]
    return rows


def _strip_seed(name: str) -> str:
    return re.sub(r"[-_]seed\d+$", "", str(name))


def _prefix(metric: str) -> str:
    return re.split(r"[_.:/]", metric, maxsplit=1)[0] or metric


@dataclass(frozen=True)
class Section:
    title: str
    read: Callable[[pd.DataFrame], list[tuple[str, str, float]]]


# Notebook (MLflow experiment) -> how its runs are read; any other notebook is read generically.
SECTIONS: dict[str, Section] = {
    "01_feature_extraction": Section("feature probes", read_features),
    "02_fusion_comparison": Section("fusion methods", read_fusion),
    "03_caption_training": Section("caption training", read_captions),
    "04_caption_evaluation": Section("caption evaluation", read_captions),
}


def section_of(notebook: str) -> Section:
    return SECTIONS.get(notebook) or Section(notebook, read_generic)


def observations(batches: Sequence[Batch]) -> pd.DataFrame:
    """One row per value: section, key (method, encoder, beam...), metric, batch, value."""
    rows = []
    for batch in batches:
        notebooks = _column(batch.runs, "mmlab.notebook")
        for notebook in sorted(notebooks.unique()):
            section = section_of(notebook)
            runs = batch.runs[notebooks == notebook]
            rows += [(section.title, k, m, batch.label, v) for k, m, v in section.read(runs)]
    return pd.DataFrame(rows, columns=OBSERVATION_COLUMNS)


def intervals(obs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per section, key, metric and batch: n, mean, std and the t-interval of the mean."""
    rows = []
    keys = OBSERVATION_COLUMNS[:4]
    for (section, key, metric, batch), group in obs.groupby(keys, sort=False):
        ci = stats.mean_ci(group["value"].to_numpy(), confidence)
        rows.append((section, key, metric, batch, ci.n, ci.mean, ci.std, ci.low, ci.high))
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "ci_low", "ci_high"])


def verdict(base: pd.Series | None, other: pd.Series | None) -> str:
    """How `other` stands against `base`: moved up/down when their intervals are disjoint (a
    single value is a point); no interval when both are single values."""
    if base is None or other is None:
        return "missing"
    if base["n"] < 2 and other["n"] < 2:
        return "no interval"
    if other["ci_low"] > base["ci_high"]:
        return "moved up"
    if other["ci_high"] < base["ci_low"]:
        return "moved down"
    return "within CI"


def changes(summary: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Every batch after the first against the first: delta of the means and the verdict."""
    rows = []
    if len(labels) < 2 or summary.empty:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    by = {(r.section, r.key, r.metric, r.batch): r for _, r in summary.iterrows()}
    keys = list(dict.fromkeys((r.section, r.key, r.metric) for r in summary.itertuples()))
    baseline = labels[0]
    for section, key, metric in keys:
        base = by.get((section, key, metric, baseline))
        for label in labels[1:]:
            other = by.get((section, key, metric, label))
            both = base is not None and other is not None
            delta = other["mean"] - base["mean"] if both else math.nan
            rows.append((section, key, metric, label, baseline, delta, verdict(base, other)))
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


@dataclass
class Report:
    batches: list[Batch]
    summary: pd.DataFrame  # intervals(): one row per section, key, metric, batch
    changes: pd.DataFrame  # changes(): one row per section, key, metric, later batch
    confidence: float = 0.95
    labels: list[str] = field(default_factory=list)

    def overview(self) -> pd.DataFrame:
        return pd.DataFrame([b.describe() for b in self.batches])

    def sections(self) -> list[str]:
        return list(dict.fromkeys(self.summary["section"]))

    def moved(self) -> pd.DataFrame:
        """The rows whose intervals no longer overlap the baseline's."""
        moved = self.changes["verdict"].isin(["moved up", "moved down"])
        return self.changes[moved].reset_index(drop=True)

    def section(self, title: str) -> pd.DataFrame:
        """One section wide: a row per key and metric, `mean [low, high] (n)` per batch, then
        each later batch's verdict against the first."""
        if title not in self.sections():
            raise KeyError(f"section {title!r}: not in this report ({self.sections()})")
        part = self.summary[self.summary["section"] == title]
        cells = part.assign(cell=[_cell(r) for r in part.itertuples()])
        table = cells.pivot_table(
            index=["key", "metric"], columns="batch", values="cell", aggfunc="first", sort=False
        )
        table = table.reindex(columns=[b for b in self.labels if b in table.columns]).fillna("-")
        moves = self.changes[self.changes["section"] == title]
        for label in self.labels[1:]:
            verdicts = moves[moves["batch"] == label].set_index(["key", "metric"])["verdict"]
            table[f"{label} vs {self.labels[0]}"] = verdicts.reindex(table.index).fillna("missing")
        table.columns.name = None
        return table

    def to_html(self) -> str:
        return render_html(self)


def compare(batches: Sequence[Batch], confidence: float = 0.95) -> Report:
    """Read every batch's stages and compare each later batch with the first."""
    labels = [b.label for b in batches]
    if len(set(labels)) != len(labels):
        raise ValueError(f"batches {labels}: each batch may be named once")
    summary = intervals(observations(batches), confidence)
    return Report(list(batches), summary, changes(summary, labels), confidence, labels)


def _cell(row) -> str:
    if row.n < 2:
        return f"{row.mean:.4g} (1)"
    return f"{row.mean:.4g} [{row.ci_low:.4g}, {row.ci_high:.4g}] ({row.n})"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.moved-up { background: #d7f5d7; font-weight: bold; }
td.moved-down { background: #f8d4d4; font-weight: bold; }
td.within-ci { color: #666; }
"""


def _table_html(table: pd.DataFrame, verdict_columns: Iterable[str] = ()) -> str:
    verdict_columns = set(verdict_columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for column, value in row.items():
            css = str(value).replace(" ", "-").lower() if column in verdict_columns else ""
            attr = f' class="{css}"' if css else ""
            cells.append(f"<td{attr}>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report) -> str:
    """A self-contained page: the batches, the moved metrics, then every section's table."""
    level = f"{report.confidence:.0%}"
    page = "Batch comparison: " + " vs ".join(report.labels)
    parts = [f"<h1>{html.escape(page)}</h1>", "<h2>Batches</h2>", _table_html(report.overview())]
    moved = report.moved()
    parts.append(f"<h2>Moved beyond their {level} intervals ({len(moved)})</h2>")
    if len(report.labels) < 2:
        parts.append("<p>One batch: nothing to compare against.</p>")
    elif moved.empty:
        parts.append("<p>No metric moved beyond its interval.</p>")
    else:
        parts.append(_table_html(moved, ["verdict"]))
    parts.append(
        f"<p>Cells: mean [{level} t-interval] (number of values: seeds or runs). A metric is "
        "flagged when its interval and the first batch's do not overlap; a single value has no "
        "interval and is never flagged alone.</p>"
    )
    for title in report.sections():
        table = report.section(title).reset_index()
        verdicts = [c for c in table.columns if " vs " in str(c)]
        parts += [f"<h2>{html.escape(title)}</h2>", _table_html(table, verdicts)]
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(page)}</title>"
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def save_html(page: str, path: str | Path) -> Path:
    """Write the report page to `path` atomically (a reader never sees half a page)."""
    path = Path(path)
    with workspace.atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
