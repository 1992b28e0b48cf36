"""ROC AUC with a 95% interval, and the paired difference of two AUCs on the same rows (DeLong).

DeLong, DeLong & Clarke-Pearson (1988), in the fast midrank form of Sun & Xu (2014): exact
for the AUC itself, a normal approximation for its variance; deterministic (no resampling).
Used by promotion (a new model must beat the current one beyond noise) and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """One model's AUC on `rows` rows (`positives` of them positive) with its interval."""

    auc: float
    low: float
    high: float
    rows: int
    positives: int

    def __str__(self) -> str:
        return (f"{self.auc:.3f} (95% CI {self.low:.3f}-{self.high:.3f}; "
                f"{self.positives:,} of {self.rows:,} positive)")  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """new AUC − current AUC on the same rows, with the interval of the paired difference."""

    new: float
    current: float
    difference: float
    low: float
    high: float
    p_value: float
    rows: int
    positives: int

    @property
    def better(self) -> bool:
        """The new model is better beyond noise: the whole interval lies above 0."""
        return self.low > 0

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "excludes 0"
        if self.high < 0:
            return "lies below 0"
        return "includes 0"

    def __str__(self) -> str:
        return (f"new AUC {self.new:.3f} vs current {self.current:.3f} on the same "
                f"{self.rows:,} held-out rows ({self.positives:,} positives); difference "
                f"{self.difference:+.3f}, 95% CI {self.low:+.3f} to {self.high:+.3f} "
                f"{self.verdict}")  # fmt: skip


def interval(y, score, level: float = LEVEL) -> Interval:
    """The AUC of `score` for labels `y`, with its DeLong interval (clipped to 0-1)."""
    y, scores = _inputs(y, [score])
    auc, cov = _delong(y, scores)
    half = _z(level) * np.sqrt(max(cov[0, 0], 0.0))
    return Interval(
        auc=float(auc[0]),
        low=float(max(auc[0] - half, 0.0)),
        high=float(min(auc[0] + half, 1.0)),
        rows=len(y),
        positives=int(y.sum()),
    )


def difference(y, new, current, level: float = LEVEL) -> Difference:
    """AUC(new) − AUC(current) on the same rows, with the DeLong interval for correlated ROCs."""
    y, scores = _inputs(y, [new, current])
    auc, cov = _delong(y, scores)
    d = float(auc[0] - auc[1])
    var = max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0)
    sd = np.sqrt(var)
    half = _z(level) * sd
    p = float(2 * norm.sf(abs(d) / sd)) if sd > 0 else float(d == 0)  # sd 0: identical ranks
    return Difference(
        new=float(auc[0]),
        current=float(auc[1]),
        difference=d,
        low=d - half,
        high=d + half,
        p_value=p,
        rows=len(y),
        positives=int(y.sum()),
    )


def _inputs(y, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=bool)
    s = np.vstack([np.asarray(x, dtype=float) for x in scores])
    if s.shape[1] != len(y):
        raise ValueError(f"{s.shape[1]} scores for {len(y)} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite to compute an AUC")
    if y.all() or not y.any():
        raise ValueError(f"AUC needs both outcomes; all {len(y)} rows are {bool(y.any())}")
    return y, s


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC per row of `scores` and the covariance matrix of those AUCs (Sun & Xu 2014)."""
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)  # midranks: ties count one half
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.hstack([pos, neg]), axis=1)
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: share of negatives it outranks
    v10 = 1 - (tz[:, m:] - ty) / m  # per negative: share of positives that outrank it
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return auc, cov


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    return float(norm.ppf(0.5 + level / 2))
