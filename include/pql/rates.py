"""Every rate a user reads: k of n with its 95% interval, or words where it cannot be judged.

One place formats rates for the page, the CSV files, the CLI, the e-mail and Slack, so a number
is rounded once (from its exact value) and never shown without how many it rests on. The
interval is Wilson's score interval (scipy), which behaves at 0 and at n; an empty group has no
rate, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

Z95 = 0.95


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of k successes in n trials (n > 0)."""
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=Z95, method="wilson")
    return float(ci.low), float(ci.high)


def pct(value: float, digits: int = 1) -> str:
    """A share as text, rounded once: 0.02049 → '2.0%'."""
    return f"{100 * value:.{digits}f}%"


@dataclass(frozen=True)
class Rate:
    """k of n. `value` and `interval` exist only when n > 0."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n) if self.n else None

    def text(self, empty: str = "no one to count yet") -> str:
        """'21.0% (13 of 62; 95% CI 12.7-32.6%)', or `empty` when n is 0."""
        if not self.n:
            return empty
        low, high = self.interval
        return (
            f"{pct(self.value)} ({self.k:,} of {self.n:,}; 95% CI "
            f"{100 * low:.1f}-{100 * high:.1f}%)"
        )

    def short(self, empty: str = "no one to count yet") -> str:
        """'21.0% (13/62)', or `empty`."""
        return f"{pct(self.value)} ({self.k:,}/{self.n:,})" if self.n else empty


def columns(prefix: str, k: pd.Series, n: pd.Series) -> pd.DataFrame:
    """`prefix`_rate, _low, _high for each row's k of n (empty where n is 0), for a table."""
    k, n = k.astype(int), n.astype(int)
    rate = (k / n.where(n > 0)).astype(float)
    bounds = [wilson(a, b) if b else (np.nan, np.nan) for a, b in zip(k, n, strict=True)]
    low = [b[0] for b in bounds]
    high = [b[1] for b in bounds]
    return pd.DataFrame(
        {f"{prefix}_rate": rate, f"{prefix}_low": low, f"{prefix}_high": high}, index=k.index
    )


def lift(a: Rate, b: Rate) -> str:
    """How many times a's rate is b's, in words where a side is empty or zero."""
    if not a.n or not b.n:
        return "not enough data to compare"
    if b.k == 0:
        return "no conversions on the other side to compare with" if a.k else "neither converts"
    return f"{a.value / b.value:.1f}x"
