"""Threshold rules: a PQL meets all (or any) of the rules; the score is the share of rules met."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pql.config import Features, Rule, ThresholdModel
from pql.scoring.reasons import cached_format, join_top, phrase


def met(features: pd.DataFrame, rules: list[Rule]) -> np.ndarray:
    """A (users, rules) boolean matrix: does each user pass each rule (missing → no)."""
    out = np.zeros((len(features), len(rules)), bool)
    for j, r in enumerate(rules):
        values = features[r.feature] if r.feature in features else pd.Series([None] * len(features))
        if r.one_of is not None:
            allowed = {v.lower() for v in r.one_of}
            out[:, j] = values.fillna("").astype(str).str.lower().isin(allowed).to_numpy()
            continue
        numbers = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        with np.errstate(invalid="ignore"):
            out[:, j] = numbers >= r.at_least if r.at_least is not None else numbers <= r.at_most
    return out


def score(features: pd.DataFrame, model: ThresholdModel, catalogue: Features) -> pd.DataFrame:
    """Score (share of rules met, 0-100), flag and the met rules in plain words."""
    hits = met(features, model.rules)
    flag = hits.all(axis=1) if model.match == "all" else hits.any(axis=1)
    texts = [_texts(features, r, catalogue) for r in model.rules]
    order = np.tile(np.arange(len(model.rules)), (len(features), 1))
    return pd.DataFrame(
        {
            "score": np.rint(100 * hits.mean(axis=1)).astype(int),
            "flag": flag,
            "reasons": join_top(texts, order, hits, model.max_reasons),
            "model_version": model.version,
        },
        index=features.index,
    )


def _texts(features: pd.DataFrame, rule: Rule, catalogue: Features) -> list:
    values = features[rule.feature] if rule.feature in features else [None] * len(features)
    values = values.tolist() if hasattr(values, "tolist") else values
    if rule.reason:
        return cached_format(values, lambda v: rule.reason.format(value=v))
    return cached_format(values, lambda v: phrase(rule.feature, v, catalogue))
