"""Train, evaluate and (only if better beyond noise on held-out time) promote a model version."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pandas as pd

from pql.config import FIRMOGRAPHICS, Config, PredictiveModel
from pql.lake import Lake
from pql.scoring import labels, snapshots

log = logging.getLogger(__name__)

TEXT = ["industry", "country", "revenue_band", "plan"]


def feature_sets(cfg: Config) -> tuple[list[str], list[str]]:
    """The catalogue split into numeric and text inputs of the predictive model."""
    numeric = [n for n in cfg.features.names() if n not in TEXT]
    return numeric, [t for t in TEXT if t in FIRMOGRAPHICS]


def moments(until: datetime, model: PredictiveModel) -> list[datetime]:
    """Training moments, oldest first: every `sample_every_days` whose horizon ended by `until`."""
    last = until - timedelta(days=model.horizon_days)
    first = until - timedelta(days=model.training_days)
    out, m = [], last
    while m >= first:
        out.append(m)
        m -= timedelta(days=model.sample_every_days)
    return out[::-1]


def training_frame(
    cfg: Config, lake: Lake, accounts: pd.DataFrame, until: datetime, model: PredictiveModel
) -> pd.DataFrame:
    """Point-in-time features at each training moment, labelled from the outcomes in the lake."""
    outcomes = labels.first_outcomes(lake)
    parts = []
    for k, m in enumerate(moments(until, model), start=1):
        feats = snapshots.features_at(cfg, lake, m, accounts)
        part = labels.label(feats, outcomes, m, model.target, model.horizon_days)
        parts.append(part)
        log.info("moment %s/%s %s: %s open users, %s converted within %s days",
                 k, len(moments(until, model)), m.date(), len(part), int(part["label"].sum()),
                 model.horizon_days)  # fmt: skip
    if not parts:
        raise ValueError(f"no training moments: history before {until:%Y-%m-%d} is too short")
    return pd.concat(parts, ignore_index=True)


def train(cfg: Config, until: datetime, accounts: pd.DataFrame) -> dict:
    """Train a new version on the history up to `until`; promote it only if better beyond noise."""
    from pql.scoring import predictive

    model = cfg.model
    if not isinstance(model, PredictiveModel):
        raise ValueError(f"model.kind is {model.kind!r}: training needs kind 'predictive'")
    lake = Lake(cfg.lake.root)
    frame = training_frame(cfg, lake, accounts, until, model)
    holdout_from = pd.Timestamp(until - timedelta(days=model.horizon_days + model.holdout_days))
    numeric, text = feature_sets(cfg)
    version = predictive.new_version(model.version, datetime.now(until.tzinfo))
    trained = predictive.train(
        frame, numeric, text, holdout_from=holdout_from, version=version, seed=0
    )
    predictive.save(trained, lake.models())
    holdout = frame[frame["moment"] >= holdout_from]
    promoted, comparison = predictive.promote(lake.models(), trained, holdout)
    log.info("trained %s: %s; %s", version, trained.metrics, comparison.get("reason"))
    return {
        "version": version,
        "promoted": promoted,
        "metrics": trained.metrics,
        "comparison": comparison,
        "rows": len(frame),
    }
