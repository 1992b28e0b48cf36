"""Replay a PQL definition over history and judge it against the published rules of thumb.

Rules of thumb (OpenView / Pocus PLG benchmarks): a good definition catches 70-80% of the
conversions while flagging under 30% of users; PQLs converting under 15% means the definition is
too loose, above 40% too tight.

The weekly report's definitions hold here too: a user starts at qualifying (PQL) or first seen,
counts in a rate only once their attribution window has closed by the time outcomes are known
(the newest outcome pull), and every rate is k of n with a 95% interval. A check is judged only
with `outcomes.min_conversions` conversions behind it; the verdict only when every check is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from pql import rates, scoring
from pql.config import Config
from pql.lake import Lake, atomic_dir
from pql.rates import Rate, lift
from pql.scoring import BAND_LABELS, BANDS, labels, snapshots

log = logging.getLogger(__name__)


@dataclass
class Backtest:
    summary: dict
    bands: pd.DataFrame
    signals: pd.DataFrame
    users: pd.DataFrame


def run(
    cfg: Config,
    first: date,
    last: date,
    accounts: pd.DataFrame,
    *,
    every_days: int = 1,
    target: str = "won",
    progress: Callable[[int, int], None] | None = None,
) -> Backtest:
    """Score as of the end of each day first..last (every `every_days`) and compare to outcomes.

    A user qualifies at the moment of their qualifying event (found between the replays, as
    the daily run does); a conversion is caught when that moment came before it. Rates count
    conversions within the attribution window after qualifying (PQLs) or first seen.
    """
    lake = Lake(cfg.lake.root)
    days = pd.date_range(first, last, freq=f"{every_days}D").date
    history = []
    for k, day in enumerate(days, start=1):
        as_of = pd.Timestamp(day + timedelta(days=1), tz="UTC").to_pydatetime()
        feats = snapshots.features_at(cfg, lake, as_of, accounts)
        s = scoring.score(feats, cfg, lake.models())
        history.append(
            pd.DataFrame(
                {"user_key": feats["user_key"], "email": feats["email"], "score": s["score"],
                 "flag": s["flag"], "first_seen": feats["first_seen"], "as_of": as_of}
            )
        )  # fmt: skip
        if progress:
            progress(k, len(days))
    h = pd.concat(history, ignore_index=True)
    h["qualified_at"] = _moments(cfg, lake, accounts, h)
    users = _per_user(h, labels.first_outcomes(lake), target)
    window = pd.Timedelta(days=cfg.outcomes.attribution_window_days)
    known = labels.known_until(lake) or pd.Timestamp(last + timedelta(days=1), tz="UTC")
    users["start"] = users["qualified_at"].fillna(users["first_seen"])
    users["mature"] = users["start"] + window <= known
    users["converted_after"] = (users["converted_at"] >= users["start"]) & (
        users["converted_at"] <= users["start"] + window
    )
    summary = _summary(users, cfg, first, last, target, known)
    return Backtest(summary, _bands(users), _signals(lake, users, last), users)


def _moments(cfg: Config, lake: Lake, accounts: pd.DataFrame, h: pd.DataFrame) -> pd.Series:
    """For each replayed row, the moment its user qualified, as the daily run stamps it: the
    qualifying event's moment between the replay before the first one that flagged them and
    that one (snapshots.qualifying_moments), not the replay's midnight."""
    at = pd.to_datetime(h["as_of"], utc=True)
    first = at[h["flag"].astype(bool)].groupby(h["user_key"]).min()
    replays = sorted(at.unique())
    previous = {b: (replays[i - 1] if i else pd.NaT) for i, b in enumerate(replays)}
    candidates = pd.DataFrame({"user_key": list(first.index), "before": list(first),
                               "after": [previous[b] for b in first]})  # fmt: skip
    if candidates.empty:
        return pd.Series(pd.NaT, index=h.index, dtype="datetime64[us, UTC]")
    moments = snapshots.qualifying_moments(cfg, lake, accounts, candidates)
    when = pd.to_datetime(h["user_key"].map(moments), utc=True)
    return when.where(h["flag"].astype(bool))


def _per_user(h: pd.DataFrame, outcomes: pd.DataFrame, target: str) -> pd.DataFrame:
    g = h.groupby("user_key")
    users = pd.DataFrame(
        {
            "email": g["email"].last(),
            "first_seen": g["first_seen"].min(),
            "max_score": g["score"].max(),
            "qualified_at": h[h["flag"]].groupby("user_key")["qualified_at"].min(),
        }
    ).reset_index()
    users["qualified_at"] = pd.to_datetime(users["qualified_at"], utc=True)
    # Outcomes are matched by email: users never seen with one cannot convert in the CRM.
    users = users[users["email"].notna()]
    users = users.merge(
        outcomes[["email", f"{target}_at"]].rename(columns={f"{target}_at": "converted_at"}),
        on="email",
        how="left",
    )
    # With no outcome pulled yet the column holds no timestamp at all: make it one.
    users["converted_at"] = pd.to_datetime(users["converted_at"], utc=True)
    users["pql"] = users["qualified_at"].notna()
    # Caught: flagged at a replayed moment before the conversion happened.
    users["caught"] = users["pql"] & (users["qualified_at"] <= users["converted_at"])
    users["days_early"] = (users["converted_at"] - users["qualified_at"]).dt.total_seconds() / 86400
    return users


def _summary(users, cfg: Config, first: date, last: date, target: str, known) -> dict:
    enough = cfg.outcomes.min_conversions
    mature = users[users["mature"]]
    pql, rest = mature[mature["pql"]], mature[~mature["pql"]]
    converters = users[users["converted_at"].notna()
                       & (users["converted_at"] >= pd.Timestamp(first, tz="UTC"))]  # fmt: skip
    flagged = Rate(int(users["pql"].sum()), len(users))
    caught = Rate(int(converters["caught"].sum()), len(converters))
    pql_rate = Rate(int(pql["converted_after"].sum()), len(pql))
    rest_rate = Rate(int(rest["converted_after"].sum()), len(rest))
    early = converters.loc[converters["caught"], "days_early"]
    first_mature = users.loc[users["pql"], "start"].min()
    too_early = (
        f"too early: no PQL window has closed by {known:%Y-%m-%d}"
        + (f"; the first closes on {first_mature + _window(cfg):%Y-%m-%d}"
           if pd.notna(first_mature) else "")
    )  # fmt: skip
    checks = [
        _check("share of users flagged", flagged, flagged.k, enough, "PQLs", "under 30%",
               lambda v: v < 0.30, lambda v: v < 0.40, "no users replayed"),
        _check("share of conversions caught", caught, caught.n, enough, "conversions",
               "70-80% or more", lambda v: v >= 0.70, lambda v: v >= 0.50, "no conversions"),
        _check(f"PQL→{target} rate", pql_rate, pql_rate.k, enough, "conversions", "15-40%",
               lambda v: 0.15 <= v <= 0.40, lambda v: 0.10 <= v <= 0.50, too_early),
    ]  # fmt: skip
    judged = all(c["status"] in ("pass", "warn", "fail") for c in checks)
    if not judged:
        advice = next(c["detail"] for c in checks if c["status"] not in ("pass", "warn", "fail"))
    elif pql_rate.value < 0.15:
        advice = "too loose: raise the threshold or require stronger signals"
    elif pql_rate.value > 0.40:
        advice = "too tight: it misses buyers; lower the threshold or add signals"
    elif caught.value < 0.70:
        advice = "catches too few conversions: add the signals converters show (see signals)"
    else:
        passed = all(c["status"] == "pass" for c in checks)
        advice = "ship it" if passed else "close: review warnings"
    return {
        "model": cfg.model.kind,
        "model_version": cfg.model.version,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "outcomes_known_until": f"{known:%Y-%m-%d}",
        "target": target,
        "window_days": cfg.outcomes.attribution_window_days,
        "users": len(users),
        "mature_users": len(mature),
        "pqls": int(users["pql"].sum()),
        "mature_pqls": len(pql),
        "flagged": flagged.text(),
        "conversions": len(converters),
        "caught": int(converters["caught"].sum()),
        "caught_share": caught.text("no conversions"),
        "days_early": (
            f"{early.median():.1f} days (median of {len(early):,} caught)"
            if len(early)
            else "no conversion was caught"
        ),  # fmt: skip
        "pql_conversion": pql_rate.text(too_early),
        "non_pql_conversion": rest_rate.text("no mature non-PQLs yet"),
        "lift": lift(pql_rate, rest_rate),
        "checks": checks,
        "verdict": advice,
    }


def _window(cfg: Config) -> pd.Timedelta:
    return pd.Timedelta(days=cfg.outcomes.attribution_window_days)


def _check(name, r: Rate, have: int, enough: int, counted: str, target: str, good, near,
           empty: str) -> dict:  # fmt: skip
    """A check judged only when `have` (its conversions, or PQLs) reaches `enough`."""
    if not r.n:
        status, detail = ("too early" if empty.startswith("too early") else "not enough data",
                          empty)  # fmt: skip
    elif have < enough:
        status = "not enough data"
        detail = f"not enough data to judge: {have} {counted} of {enough} needed"
    else:
        status = "pass" if good(r.value) else ("warn" if near(r.value) else "fail")
        detail = ""
    figures = {"value": r.value, "low": r.interval[0], "high": r.interval[1]} if r.n else {}
    return {"check": name, "text": r.text(empty), "k": r.k, "n": r.n, **figures,
            "target": target, "status": status, "detail": detail}  # fmt: skip


def _bands(users: pd.DataFrame) -> pd.DataFrame:
    """Mature users by their best score band: converted within the window, k of n and CI."""
    m = users[users["mature"]]
    band = pd.cut(m["max_score"], BANDS, right=False, labels=BAND_LABELS)
    g = m.groupby(band, observed=False)["converted_after"]
    out = pd.DataFrame({"users": g.size(), "converted": g.sum()}).reset_index(names="band")
    out = out.join(rates.columns("conversion", out["converted"], out["users"]))
    out["text"] = [Rate(int(k), int(n)).short("no mature users")
                   for k, n in zip(out["converted"], out["users"], strict=True)]  # fmt: skip
    return out


def _signals(lake: Lake, users: pd.DataFrame, last: date) -> pd.DataFrame:
    """Events most converters did before converting and few non-converters ever did."""
    u = users[["user_key", "converted_at"]].copy()
    u["converted_at"] = u["converted_at"].dt.tz_convert("UTC").dt.tz_localize(None)
    end = pd.Timestamp(last + timedelta(days=1))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("u", u)
        return (
            con.sql(
                f"""
            WITH ev AS (
                SELECT DISTINCT e.user_key, e.event_name, u.converted_at IS NOT NULL AS converter
                FROM read_parquet('{lake.events_glob()}', hive_partitioning = false) e
                JOIN u USING (user_key)
                WHERE CAST(e.ts AS TIMESTAMP) < coalesce(u.converted_at, TIMESTAMP '{end}')
            ), n AS (
                SELECT count(*) FILTER (WHERE converted_at IS NOT NULL) AS conv,
                       count(*) FILTER (WHERE converted_at IS NULL) AS rest FROM u
            )
            SELECT event_name AS event,
                   round(count(*) FILTER (WHERE converter) / greatest(any_value(n.conv), 1), 4)
                       AS converters_share,
                   round(count(*) FILTER (WHERE NOT converter) / greatest(any_value(n.rest), 1), 4)
                       AS non_converters_share
            FROM ev, n GROUP BY event_name
            """
            )
            .df()
            .assign(
                ratio=lambda d: (
                    d["converters_share"] / d["non_converters_share"].clip(lower=0.001)
                ).round(2)
            )
            .sort_values(["ratio", "converters_share"], ascending=False, ignore_index=True)
        )
    finally:
        con.close()


def write(result: Backtest, out_dir: Path) -> Path:
    """summary.json, bands.csv, signals.csv, users.csv and report.html, written atomically."""
    from pql.pages import TEMPLATES

    with atomic_dir(out_dir) as tmp:
        (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str))
        pd.DataFrame(result.summary["checks"]).to_csv(tmp / "checks.csv", index=False)
        result.bands.to_csv(tmp / "bands.csv", index=False)
        result.signals.to_csv(tmp / "signals.csv", index=False)
        result.users.to_csv(tmp / "users.csv", index=False)
        html = TEMPLATES.get_template("backtest.html").render(
            s=result.summary,
            bands=result.bands.to_dict("records"),
            signals=result.signals.head(15).to_dict("records"),
            generated=datetime.now().isoformat(timespec="seconds"),
        )
        (tmp / "report.html").write_text(html)
    return out_dir
