"""Threshold rules, weighted decay and dormancy, accounts (PQA), and config checks by key path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pql import config
from pql.scoring import accounts, threshold, weighted
from pql.scoring.reasons import phrase

FEATURES = config.Features()
RULES = [
    {"feature": "core_feature_used_7d", "at_least": 5},
    {"feature": "teammate_invited_30d", "at_least": 1},
    {"feature": "industry", "one_of": ["Software"], "reason": "{value} company"},
]


def _threshold(match: str) -> config.ThresholdModel:
    return config.ThresholdModel.model_validate(
        {"kind": "threshold", "version": "t-1", "match": match, "rules": RULES}
    )


FEATS = pd.DataFrame(
    {
        "core_feature_used_7d": [9, 9, 0, None],
        "teammate_invited_30d": [4, 0, 1, None],
        "industry": ["Software", "software", None, None],
    }
)


def test_threshold_all_and_any_with_reasons_in_plain_words():
    every = threshold.score(FEATS, _threshold("all"), FEATURES)
    assert list(every["flag"]) == [True, False, False, False]
    assert list(every["score"]) == [100, 67, 33, 0]  # share of rules met
    assert every["reasons"][0] == (
        "used the core feature 9 times in 7 days; invited 4 teammates in 30 days; Software company"
    )
    assert every["reasons"][3] == ""  # missing values meet no rule, and are not an error
    anyone = threshold.score(FEATS, _threshold("any"), FEATURES)
    assert list(anyone["flag"]) == [True, True, True, False]
    assert anyone["reasons"][2] == "invited 1 teammate in 30 days"


def test_weighted_time_decay_and_dormancy():
    model = config.WeightedModel.model_validate(
        {
            "kind": "weighted",
            "version": "w-1",
            "threshold": 30,
            "signals": [
                {"kind": "event", "event": "Core Feature Used", "window_days": 14,
                 "points_each": 10, "half_life_days": 7,
                 "reason": "used the core feature {n} times in {window_days} days"},
                {"kind": "dormant", "days": 10, "points": -25},
            ],
        }
    )  # fmt: skip
    feats = pd.DataFrame(
        {"s0": [4.0, 1.0], "s0_n": [4, 8], "days_since_last_seen": [0.5, 12.2]}
    )  # 8 old events decay to the weight of 1 recent one
    out = weighted.score(feats, model)
    assert list(out["score"]) == [40, 0]
    assert list(out["flag"]) == [True, False]
    assert out["reasons"][0] == "used the core feature 4 times in 14 days"
    assert out["reasons"][1] == "used the core feature 8 times in 14 days; inactive for 12 days"


def test_accounts_qualify_by_count_or_share_of_active_users():
    scored = pd.DataFrame(
        {
            "account_key": ["a.io"] * 4 + ["b.io"] * 2 + ["c.io"] * 3 + [None],
            "flag": [True, True, True, False, True, False, True, False, False, True],
            "score": [90, 80, 70, 10, 60, 10, 70, 5, 5, 99],
            "days_since_last_seen": [1, 2, 3, 4, 1, 30, 1, 1, 1, 1],
            "employees": [50] * 10,
            "industry": ["Software"] * 10,
        }
    )
    rule = config.Accounts(min_qualified_users=3, min_qualified_share=0.5, min_active_users=1)
    out = accounts.rollup(scored, rule, active_days=14).set_index("account_key")
    assert list(out.index) == ["a.io", "b.io", "c.io"]  # no account key: not an account
    assert out.loc["a.io", "qualified"]  # 3 qualified users
    assert out.loc["b.io", "qualified_share"] == 1.0 and out.loc["b.io", "qualified"]  # 1 of 1
    assert not out.loc["c.io", "qualified"]  # 1 of 3 active
    assert out.loc["a.io", "best_score"] == 90 and out.loc["a.io", "total_score"] == 250
    assert out.loc["c.io", "reasons"].startswith("1 of 3 active users qualified")
    both = config.Accounts(match="all", min_qualified_users=3, min_qualified_share=0.5)
    strict = accounts.rollup(scored, both, active_days=14).set_index("account_key")
    assert list(strict["qualified"]) == [True, False, False]


def test_phrases_read_like_a_rep_would_say_them():
    assert phrase("integrations_30d", 3, FEATURES) == "3 different integrations in 30 days"
    assert phrase("usage_limit_hit_7d", 2, FEATURES) == "hit the usage limit 2 times in 7 days"
    assert phrase("active_days_7d", 5, FEATURES) == "active 5 of the last 7 days"
    assert phrase("employees", 250, FEATURES) == "250 employees"
    assert phrase("days_since_last_seen", 0.2, FEATURES) == "last active less than a day ago"
    assert phrase("free_email", True, FEATURES) == "signed up with a free email address"


BAD = """\
sources: [{name: mixpanel, kind: mixpanel, project_id: 1, project_created: 2024-03-01}]
features:
  windows: [7, 0, 400]
model:
  kind: threshold
  version: t
  rules:
    - {feature: core_feature_used_8d, at_least: 5}
    - {feature: industry, at_least: 3}
    - {feature: active_days_7d}
crm: {kind: hubspot}
"""

BAD_EVENTS = """\
sources: [{name: mixpanel, kind: mixpanel, project_id: 1, project_created: 2024-03-01}]
model:
  kind: weighted
  version: w
  threshold: 50
  signals:
    - {kind: event, event: Core Feture Used, window_days: 7, points_each: 1}
crm: {kind: hubspot}
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    return err.value.problems


def test_config_mistakes_in_models_are_named_by_key_path(tmp_path):
    problems = _problems(tmp_path, BAD)
    assert any(p.startswith("line 3: features.windows: windows are days between 1 and 365")
               for p in problems), problems  # fmt: skip
    # With the windows broken the feature names are unknown, so only the shapes are checked.
    assert any("model.rules[1]: 'industry' is text: use 'one_of'" in p for p in problems)
    assert any("model.rules[2]: give exactly one of" in p for p in problems)
    fixed = BAD.replace("[7, 0, 400]", "[7, 30]")
    problems = _problems(tmp_path, fixed)
    assert any(
        p.startswith("line 8: model.rules[0].feature: unknown feature 'core_feature_used_8d'")
        and "core_feature_used_7d" in p
        for p in problems
    ), problems
    events = _problems(tmp_path, BAD_EVENTS)
    assert events == [
        "line 7: model.signals[0].event: unknown event 'Core Feture Used'; tracked events "
        "(features.events): " + ", ".join(config.Features().events) + " (got 'Core Feture Used')"
    ]


def test_predictive_config_needs_room_to_train(tmp_path):
    text = BAD_EVENTS.replace(
        """  kind: weighted
  version: w
  threshold: 50
  signals:
    - {kind: event, event: Core Feture Used, window_days: 7, points_each: 1}""",
        "  {kind: predictive, horizon_days: 30, holdout_days: 28, training_days: 50}",
    )
    assert _problems(tmp_path, text) == [
        "line 2: model: training_days must exceed holdout_days + horizon_days"
    ]


def test_feature_names_are_stable_and_cover_every_window():
    names = config.Features(windows=[30, 7, 7]).names()
    assert names[:2] == ["core_feature_used_7d", "teammate_invited_7d"]
    assert "integrations_30d" in names and "active_days_30d" in names
    assert len(names) == len(set(names))
    assert np.all([n in names for n in ("employees", "industry", "plan", "free_email")])
