"""Benchmark: how well each model kind ranks future buyers, and how fast scoring runs.

    .venv/bin/python bench/scoring_quality.py                 # 12,000 users, 180 days
    .venv/bin/python bench/scoring_quality.py --users 4000    # quicker

Builds a synthetic world with a seed no test or config was tuned on (cached under var/bench/),
straight into a lake (events, weekly outcome pulls, firmographics). Then:

1. trains the predictive model (config/examples/predictive.yaml) on moments before its held-out
   period, exactly as `pql train` does;
2. on the held-out moments (point-in-time features of users still open, labelled "won within
   30 days"), scores every user with the weighted (config/pql.yaml), threshold
   (config/examples/threshold.yaml) and predictive models and prints ROC AUC, the share flagged,
   recall of conversions at that share, and the predictive model's expected calibration error;
3. scores 1,000,000 users (held-out rows resampled) with each kind and prints users per second,
   with the ratio against a row-at-a-time baseline (pandas apply) run in the same process.

Targets: predictive AUC > weighted AUC on held-out time; ECE < 0.05; 1M users in seconds.
"""

from __future__ import annotations

import argparse
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pql import config, scoring
from pql.enrich import firmographics
from pql.lake import Lake
from pql.scoring import labels, predictive, snapshots, training
from sandbox import lakegen, world

ROOT = Path(__file__).resolve().parents[1]


def build(cache: Path, seed: int, users: int, days: int) -> tuple[Lake, datetime]:
    spec = world.WorldSpec(seed=seed, start=date(2025, 6, 2), days=days, users=users,
                           accounts=max(300, users // 8))  # fmt: skip
    lake = Lake(cache / f"quality_seed{seed}_{users}u_{days}d")
    if not (lake.root / "done").exists():
        started = time.perf_counter()
        print(f"writing the world ({users:,} users, {days} days) into {lake.root} …", flush=True)
        counts = lakegen.write(spec, lake, progress=lambda k: print(f"  {k:,} users", flush=True))
        (lake.root / "done").write_text(str(counts))
        print(f"  {counts} in {time.perf_counter() - started:.0f} s", flush=True)
    return lake, spec.end


def load(path: Path, lake: Lake) -> config.Config:
    return config.load(path).model_copy(update={"lake": config.LakeSettings(root=lake.root)})


def holdout_rows(cfg: config.Config, lake: Lake, until: datetime) -> pd.DataFrame:
    """Held-out moments: features of open users with their 'won within horizon' label."""
    model = cfg.model
    first = until - timedelta(days=model.horizon_days + model.holdout_days)
    accounts, outcomes = firmographics.read(lake), labels.first_outcomes(lake)
    parts = []
    for m in training.moments(until, model):
        if m >= first:
            feats = snapshots.features_at(cfg, lake, m, accounts)
            parts.append(labels.label(feats, outcomes, m, model.target, model.horizon_days))
    return pd.concat(parts, ignore_index=True)


def signal_columns(cfg: config.Config, lake: Lake, rows: pd.DataFrame) -> pd.DataFrame:
    """The weighted model's own signal columns at the same moments (it reads s0, s1, ...)."""
    accounts = firmographics.read(lake)
    parts = []
    for m, group in rows.groupby("moment"):
        feats = snapshots.features_at(cfg, lake, m.to_pydatetime(), accounts)
        parts.append(group[["user_key", "moment", "label"]].merge(feats, on="user_key"))
    return pd.concat(parts, ignore_index=True)


def quality(name: str, scored: pd.DataFrame, y: np.ndarray) -> dict:
    flagged = scored["flag"].to_numpy(bool)
    ranking = scored["probability"] if "probability" in scored else scored["score"]
    return {
        "model": name,
        "auc": roc_auc_score(y, ranking),
        "flagged_share": flagged.mean(),
        "recall_at_flagged": flagged[y].mean() if y.any() else float("nan"),
        "pql_win_rate": y[flagged].mean() if flagged.any() else float("nan"),
    }


def throughput(cfg: config.Config, lake: Lake, rows: pd.DataFrame, n: int) -> tuple[float, int]:
    big = rows.sample(n=n, replace=True, random_state=0).reset_index(drop=True)
    started = time.perf_counter()
    out = scoring.score(big, cfg, lake.models())
    return time.perf_counter() - started, len(out)


def row_at_a_time(cfg: config.Config, rows: pd.DataFrame, n: int) -> float:
    """Baseline: the weighted points computed one user at a time with DataFrame.apply."""
    model = cfg.model
    sample = rows.sample(n=n, replace=True, random_state=1).reset_index(drop=True)

    def one(row):
        return weighted_one(row, model)

    started = time.perf_counter()
    sample.apply(one, axis=1)
    return time.perf_counter() - started


def weighted_one(row: pd.Series, model: config.WeightedModel) -> int:
    from pql.scoring import weighted

    return int(weighted.score(row.to_frame().T, model)["score"].iloc[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--users", type=int, default=12_000)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--score-users", type=int, default=1_000_000)
    ap.add_argument("--cache", type=Path, default=ROOT / "var" / "bench")
    args = ap.parse_args()

    lake, end = build(args.cache, args.seed, args.users, args.days)
    pred = load(ROOT / "config" / "examples" / "predictive.yaml", lake)
    weighted_cfg = load(ROOT / "config" / "pql.yaml", lake)
    threshold_cfg = load(ROOT / "config" / "examples" / "threshold.yaml", lake)

    started = time.perf_counter()
    trained = training.train(pred, end, firmographics.read(lake))
    print(f"\ntrained {trained['version']} on {trained['rows']:,} user-moments in "
          f"{time.perf_counter() - started:.0f} s; promoted: {trained['promoted']}")  # fmt: skip

    rows = signal_columns(weighted_cfg, lake, holdout_rows(pred, lake, end))
    y = rows["label"].to_numpy(bool)
    print(f"held-out: {len(rows):,} user-moments at {rows['moment'].nunique()} moments, "
          f"{y.sum():,} won within {pred.model.horizon_days} days ({y.mean():.2%})\n")  # fmt: skip
    results = []
    for name, cfg in (
        ("weighted", weighted_cfg),
        ("threshold", threshold_cfg),
        ("predictive", pred),
    ):
        results.append(quality(name, scoring.score(rows, cfg, lake.models()), y))
    p = scoring.score(rows, pred, lake.models())["probability"].to_numpy()
    ece = predictive.expected_calibration_error(y, p)

    print(f"{'model':12s} {'ROC AUC':>8s} {'flagged':>8s} {'recall':>8s} {'PQL win':>8s}")
    for r in results:
        print(f"{r['model']:12s} {r['auc']:8.3f} {r['flagged_share']:8.1%} "
              f"{r['recall_at_flagged']:8.1%} {r['pql_win_rate']:8.1%}")  # fmt: skip
    print(f"\npredictive expected calibration error: {ece:.4f} (mean p {p.mean():.3f}, "
          f"observed {y.mean():.3f})")  # fmt: skip

    print(f"\nscoring {args.score_users:,} users:")
    baseline_n = 2_000
    base_s = row_at_a_time(weighted_cfg, rows, baseline_n)
    base_rate = baseline_n / base_s
    print(f"  {'row-at-a-time baseline':26s} {base_rate:12,.0f} users/s (on {baseline_n:,})")
    speeds = {}
    for name, cfg in (
        ("weighted", weighted_cfg),
        ("threshold", threshold_cfg),
        ("predictive", pred),
    ):
        seconds, n = throughput(cfg, lake, rows, args.score_users)
        speeds[name] = n / seconds
        print(f"  {name:26s} {n / seconds:12,.0f} users/s ({seconds:.1f} s; "
              f"{n / seconds / base_rate:,.0f}x the baseline)")  # fmt: skip

    auc = {r["model"]: r["auc"] for r in results}
    print("\ntargets:")
    print(
        f"  predictive AUC {auc['predictive']:.3f} > weighted {auc['weighted']:.3f}: "
        + ("met" if auc["predictive"] > auc["weighted"] else "NOT met")
    )
    print(f"  calibration error {ece:.4f} < 0.05: " + ("met" if ece < 0.05 else "NOT met"))
    slowest = min(speeds.values())
    print(
        f"  1M users in {args.score_users / slowest:.1f} s at the slowest kind: "
        + ("met (seconds)" if args.score_users / slowest < 60 else "NOT met")
    )


if __name__ == "__main__":
    main()
