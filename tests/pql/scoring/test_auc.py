"""AUC intervals and the paired AUC difference (DeLong) used by promotion and the benchmarks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pql.scoring import auc


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = rng.random(n) < 1 / (1 + np.exp(-(-1.5 + 1.5 * z)))
    return rng, z, y


def test_interval_matches_sklearn_and_covers_the_truth():
    rng, z, y = _rows(4_000, seed=1)
    score = z + rng.normal(0, 1, len(z))
    i = auc.interval(y, score)
    assert i.auc == pytest.approx(roc_auc_score(y, score))
    assert i.low < i.auc < i.high and 0.02 < i.high - i.low < 0.08
    assert i.rows == 4_000 and i.positives == int(y.sum())
    # Ties count one half, as in sklearn.
    rounded = np.round(score)
    assert auc.interval(y, rounded).auc == pytest.approx(roc_auc_score(y, rounded))
    assert "positive" in str(i) and "95% CI" in str(i)


def test_interval_width_matches_the_bootstrap():
    rng, z, y = _rows(3_000, seed=2)
    score = z + rng.normal(0, 1, len(z))
    i = auc.interval(y, score)
    boot = np.random.default_rng(0)
    draws = []
    for _ in range(400):
        k = boot.integers(0, len(y), len(y))
        draws.append(roc_auc_score(y[k], score[k]))
    sd = (i.high - i.low) / (2 * 1.959964)
    assert np.std(draws) == pytest.approx(sd, rel=0.15)


def test_difference_of_a_model_with_itself_is_exactly_zero():
    rng, z, y = _rows(2_000, seed=3)
    d = auc.difference(y, z, z)
    assert d.difference == 0 and d.low == d.high == 0 and not d.better
    assert d.verdict == "includes 0"


def test_paired_difference_sees_a_small_real_gain_and_not_noise():
    rng, z, y = _rows(20_000, seed=4)
    shared = rng.normal(0, 1, len(z))
    good = z + shared
    # Same signal plus a hair of independent noise: AUCs differ by noise only.
    noisy = good + rng.normal(0, 0.05, len(z))
    d = auc.difference(y, noisy, good)
    assert abs(d.difference) < 0.003 and d.low < 0 < d.high and not d.better
    # Less noise in the signal: a real, small gain the paired test finds.
    better = z + 0.95 * shared
    d = auc.difference(y, better, good)
    assert d.difference > 0 and d.better and d.verdict == "excludes 0" and d.p_value < 0.05
    # The unpaired intervals overlap, yet the paired one excludes 0.
    a, b = auc.interval(y, better), auc.interval(y, good)
    assert a.low < b.high
    assert d.new == pytest.approx(a.auc) and d.current == pytest.approx(b.auc)
    worse = auc.difference(y, good, better)
    assert worse.verdict == "lies below 0" and not worse.better
    assert "same 20,000 held-out rows" in str(d) and "excludes 0" in str(d)


def test_refuses_one_class_and_mismatched_rows():
    with pytest.raises(ValueError, match="both outcomes"):
        auc.interval([True, True], [0.1, 0.2])
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        auc.interval([True, False], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        auc.difference([True, False], [0.1, np.nan], [0.1, 0.2])
