"""Small statistics for comparing runs over seeds: means with t-based confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single value
    low: float
    high: float
    n: int

    def row(self) -> dict[str, float]:
        """The columns of a summary table: n, mean, std, ci_low, ci_high."""
        return dict(n=self.n, mean=self.mean, std=self.std, ci_low=self.low, ci_high=self.high)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t confidence interval of the mean; one value gives that value alone."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, 0.0, mean, mean, 1)
    std = float(x.std(ddof=1))
    half = float(st.t.ppf((1 + confidence) / 2, df=x.size - 1)) * std / np.sqrt(x.size)
    return Interval(mean, std, mean - half, mean + half, int(x.size))


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value (runs paired by seed); NaN when it is undefined."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    diff = a - b
    if diff.size < 2:
        return float("nan")
    if np.allclose(diff, diff[0]):
        return 1.0 if np.isclose(diff[0], 0) else 0.0
    return float(st.ttest_rel(a, b).pvalue)


def summarize(
    frame: pd.DataFrame, by: str, metric: str, confidence: float = 0.95, extra: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per `by` group: n, mean, std, ci_low, ci_high of `metric`, plus the mean of
    each `extra` column; sorted best first."""
    missing = [c for c in (by, metric, *extra) if c not in frame.columns]
    if missing:
        raise KeyError(f"summarize: columns {missing} not in {list(frame.columns)}")
    rows = []
    for key, group in frame.groupby(by, sort=False):
        ci = mean_ci(group[metric].to_numpy(), confidence)
        rows.append({by: key, **ci.row(), **{c: float(group[c].mean()) for c in extra}})
    return pd.DataFrame(rows).sort_values("mean", ascending=False, ignore_index=True)
