"""Weighted points model: points per signal with windows and caps, negative signals, a threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql.config import (
    ActiveDaysSignal,
    EventSignal,
    FirmographicSignal,
    FreeEmailSignal,
    WeightedModel,
)
from pql.features import signal_column


def contributions(features: pd.DataFrame, model: WeightedModel) -> pd.DataFrame:
    """Points each signal gives each user (columns s0, s1, ...), before the 0-100 clip.

    `features` must hold the signal counts (from features.user_features) joined with the
    account's firmographics (employees, industry, country; missing values give no points).
    """
    out = pd.DataFrame(index=features.index)
    for i, s in enumerate(model.signals):
        col = signal_column(i)
        if isinstance(s, EventSignal | ActiveDaysSignal):
            pts = features[col].astype(float) * s.points_each
            out[col] = pts.clip(upper=s.max_points) if s.max_points is not None else pts
        elif isinstance(s, FirmographicSignal):
            values = features.get(s.field)
            if values is None:
                hit = pd.Series(False, index=features.index)
            elif s.at_least is not None:
                hit = (pd.to_numeric(values, errors="coerce").astype(float) >= s.at_least).fillna(
                    False
                )
            else:
                allowed = {v.lower() for v in s.one_of}
                hit = values.fillna("").astype(str).str.lower().isin(allowed)
            out[col] = np.where(hit, s.points, 0.0)
        elif isinstance(s, FreeEmailSignal):
            out[col] = np.where(features["free_email"].fillna(False).astype(bool), s.points, 0.0)
    return out


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
    cols = list(points.columns)
    values = points.to_numpy()
    order = np.argsort(-values, axis=1, kind="stable")
    out = []
    for r in range(len(points)):
        row = features.iloc[r]
        positive = [c for c in order[r] if values[r, c] > 0][: model.max_reasons]
        negative = [c for c in range(len(cols)) if values[r, c] < 0]
        out.append("; ".join(_say(model.signals[c], row, cols[c]) for c in positive + negative))
    return out


def _say(signal, row: pd.Series, col: str) -> str:
    if isinstance(signal, EventSignal):
        return signal.reason.format(
            n=int(row[col]), event=signal.event, window_days=signal.window_days
        )
    if isinstance(signal, ActiveDaysSignal):
        return signal.reason.format(n=int(row[col]), window_days=signal.window_days)
    if isinstance(signal, FirmographicSignal):
        value = row.get(signal.field)
        if signal.field == "employees":
            value = f"{int(value):,}"
        return signal.reason.format(value=value, field=signal.field)
    return signal.reason
