"""Weighted points model: points per signal with windows, caps, time decay, negative signals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql.config import (
    ActiveDaysSignal,
    DormantSignal,
    EventSignal,
    FirmographicSignal,
    FreeEmailSignal,
    WeightedModel,
)
from pql.scoring.features import signal_column
from pql.scoring.reasons import cached_format, join_top


def contributions(features: pd.DataFrame, model: WeightedModel) -> pd.DataFrame:
    """Points each signal gives each user (columns s0, s1, ...), before the 0-100 clip.

    `features` must hold the signal columns (features.user_features with the model), the
    catalogue's days_since_last_seen and free_email, and the account's firmographics
    (enrich.join; missing values give no points).
    """
    out = pd.DataFrame(index=features.index)
    for i, s in enumerate(model.signals):
        col = signal_column(i)
        if isinstance(s, EventSignal | ActiveDaysSignal):
            pts = features[col].fillna(0).astype(float) * s.points_each
            out[col] = pts.clip(upper=s.max_points) if s.max_points is not None else pts
        elif isinstance(s, FirmographicSignal):
            out[col] = np.where(_firmographic_hit(features, s), s.points, 0.0)
        elif isinstance(s, FreeEmailSignal):
            out[col] = np.where(features["free_email"].fillna(False).astype(bool), s.points, 0.0)
        elif isinstance(s, DormantSignal):
            idle = pd.to_numeric(features["days_since_last_seen"], errors="coerce").fillna(0)
            out[col] = np.where(idle >= s.days, s.points, 0.0)
    return out


def _firmographic_hit(features: pd.DataFrame, s: FirmographicSignal) -> np.ndarray:
    values = features.get(s.field)
    if values is None:
        return np.zeros(len(features), bool)
    if s.at_least is not None:
        return (pd.to_numeric(values, errors="coerce").astype(float) >= s.at_least).fillna(False)
    allowed = {v.lower() for v in s.one_of}
    return values.fillna("").astype(str).str.lower().isin(allowed).to_numpy()


def score(features: pd.DataFrame, model: WeightedModel) -> pd.DataFrame:
    """Score, flag and reasons per user, in the order of `features`."""
    points = contributions(features, model)
    total = points.sum(axis=1).clip(0, 100).round().astype(int)
    return pd.DataFrame(
        {
            "score": total,
            "flag": total >= model.threshold,
            "reasons": reasons(features, points, model),
            "model_version": model.version,
        },
        index=features.index,
    )


def reasons(features: pd.DataFrame, points: pd.DataFrame, model: WeightedModel) -> list[str]:
    """Plain-word reasons: the strongest positive signals first, then any negative ones."""
    values = points.to_numpy()
    texts = [_texts(features, s, signal_column(i)) for i, s in enumerate(model.signals)]
    # Positive signals by points, strongest first; then every negative one, in config order.
    positive = np.where(values > 0, -values, np.inf)
    order = np.argsort(positive, axis=1, kind="stable")
    top = join_top(texts, order, values > 0, model.max_reasons)
    negative = join_top(texts, np.tile(np.arange(values.shape[1]), (len(values), 1)),
                        values < 0, values.shape[1])  # fmt: skip
    return [f"{a}; {b}" if a and b else a or b for a, b in zip(top, negative, strict=True)]


def _texts(features: pd.DataFrame, s, col: str) -> list:
    """The signal's reason for every row (only read where the signal gave points)."""
    n = len(features)
    if isinstance(s, EventSignal):
        counts = features[f"{col}_n"] if s.half_life_days else features[col]
        return cached_format(
            counts.fillna(0).astype(int).tolist(),
            lambda v: s.reason.format(n=v, event=s.event, window_days=s.window_days),
        )
    if isinstance(s, ActiveDaysSignal):
        return cached_format(
            features[col].fillna(0).astype(int).tolist(),
            lambda v: s.reason.format(n=v, window_days=s.window_days),
        )
    if isinstance(s, FirmographicSignal):
        values = features[s.field] if s.field in features else pd.Series([None] * n)
        return cached_format(
            values.tolist(),
            lambda v: s.reason.format(
                value=f"{int(v):,}" if s.field == "employees" and v is not None else v,
                field=s.field,
            ),
        )
    if isinstance(s, DormantSignal):
        idle = pd.to_numeric(features["days_since_last_seen"], errors="coerce").fillna(0)
        return cached_format(idle.astype(int).tolist(), lambda v: s.reason.format(n=v))
    return [s.reason] * n
