"""Scoring models: each turns user features into a 0-100 score, a flag and plain-word reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pql.config import Config, PredictiveModel, ThresholdModel, WeightedModel

SCORE_COLUMNS = ["score", "flag", "reasons", "model_version"]
# Score bands, for charts and backtests: [0, 20), [20, 40), ... [80, 100].
BANDS = [0, 20, 40, 60, 80, 101]
BAND_LABELS = ["0-19", "20-39", "40-59", "60-79", "80-100"]


class NoTrainedModel(LookupError):
    """The predictive model kind is configured but no model was trained and promoted yet."""


def score(features: pd.DataFrame, cfg: Config, models_dir: Path) -> pd.DataFrame:
    """Score, flag, reasons and model version per user with the configured model kind."""
    model = cfg.model
    if isinstance(model, WeightedModel):
        from pql.scoring import weighted

        return weighted.score(features, model)
    if isinstance(model, ThresholdModel):
        from pql.scoring import threshold

        return threshold.score(features, model, cfg.features)
    if isinstance(model, PredictiveModel):
        return predictive_score(features, cfg, models_dir)
    raise TypeError(f"unknown model kind {model!r}")


def predictive_score(
    features: pd.DataFrame, cfg: Config, models_dir: Path, version: str | None = None
) -> pd.DataFrame:
    """The promoted (or given) predictive model: probability → 0-100 score, reasons from it."""
    import numpy as np

    from pql.scoring import predictive
    from pql.scoring.reasons import cached_format, phrase

    if version is None and predictive.current_version(models_dir) is None:
        raise NoTrainedModel(
            f"model.kind is 'predictive' but no model was promoted in {models_dir}: "
            "run `pql train` (or the weekly retraining) first, or use a weighted model meanwhile"
        )
    trained = predictive.load(models_dir, version)
    p = predictive.predict(trained, features)
    names = predictive.top_features(trained, features, cfg.model.max_reasons)
    words: dict[str, list] = {}
    texts = []
    for r, row in enumerate(names):
        parts = []
        for name in row:
            if name not in words:
                values = features[name].tolist() if name in features else [None] * len(p)
                words[name] = cached_format(values, lambda v, n=name: phrase(n, v, cfg.features))
            parts.append(words[name][r])
        texts.append("; ".join(parts))
    return pd.DataFrame(
        {
            "score": np.rint(100 * p).astype(int),
            "flag": p >= cfg.model.threshold,
            "reasons": texts,
            "model_version": trained.version,
            "probability": p,
        },
        index=features.index,
    )
