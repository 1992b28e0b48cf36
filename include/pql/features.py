"""Point-in-time user features in DuckDB: as of T, only events before T are read.

The catalogue (config `features`) gives every model the same named columns: counts per tracked
event and window (`core_feature_used_14d`), distinct property values (`integrations_30d`), active
days (`active_days_7d`), recency (`days_since_last_seen`), free email and, joined later by
enrich.join, firmographics. A weighted model adds one column per signal (s0, s1, ...; with time
decay, s0 is the decayed sum and s0_n the plain count).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pandas as pd

from pql.config import ActiveDaysSignal, EventSignal, Features, WeightedModel, slug


def signal_column(i: int) -> str:
    return f"s{i}"


def _lit(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ts(moment: datetime) -> str:
    return f"TIMESTAMPTZ {_lit(pd.Timestamp(moment).isoformat())}"


def catalogue_sql(features: Features, as_of: datetime) -> list[str]:
    """The aggregate expressions of the feature catalogue over the events `ev` before `as_of`."""
    out = []
    for w in features.windows:
        since = _ts(as_of - timedelta(days=w))
        for e in features.events:
            out.append(
                f"count(*) FILTER (WHERE event_name = {_lit(e)} AND ts >= {since}) "
                f"AS {slug(e)}_{w}d"
            )
        for d in features.distinct:
            value = f"json_extract_string(properties, {_lit('$.' + d.property)})"
            out.append(
                f"count(DISTINCT {value}) FILTER (WHERE event_name = {_lit(d.event)} "
                f"AND ts >= {since}) AS {d.name}_{w}d"
            )
        days = "count(DISTINCT CAST(ts AS DATE))"
        out.append(f"{days} FILTER (WHERE ts >= {since}) AS active_days_{w}d")
    return out


def signal_sql(model: WeightedModel, as_of: datetime) -> list[str]:
    """One column per windowed signal of a weighted model (decayed sum and count if decaying)."""
    out = []
    for i, s in enumerate(model.signals):
        col = signal_column(i)
        since = _ts(as_of - timedelta(days=getattr(s, "window_days", 0)))
        if isinstance(s, EventSignal):
            where = f"event_name = {_lit(s.event)} AND ts >= {since}"
            if s.half_life_days:
                age = f"epoch({_ts(as_of)} - ts) / 86400.0"
                decayed = f"sum(pow(0.5, {age} / {s.half_life_days}))"
                out.append(f"{decayed} FILTER (WHERE {where}) AS {col}")
                out.append(f"count(*) FILTER (WHERE {where}) AS {col}_n")
            else:
                out.append(f"count(*) FILTER (WHERE {where}) AS {col}")
        elif isinstance(s, ActiveDaysSignal):
            out.append(f"count(DISTINCT CAST(ts AS DATE)) FILTER (WHERE ts >= {since}) AS {col}")
    return out


def user_features(
    events_glob: str,
    as_of: datetime,
    features: Features,
    free_email_domains: list[str],
    *,
    profiles: str | None = None,
    model: WeightedModel | None = None,
) -> pd.DataFrame:
    """One row per identified user seen before `as_of`: identity, the catalogue, the signals.

    Identity: anonymous events ('$device:...') join the user their device was later identified
    as (ID merge, known before `as_of`); devices never identified are left out. Email: the
    latest one on the user's events, else their profile's (`profiles`: Parquet of user_key,
    email). Account: group key, else the email's domain unless it is a free-mail domain.
    Plan: the latest `plan` property on the user's events.
    """
    aggregates = catalogue_sql(features, as_of)
    if isinstance(model, WeightedModel):
        aggregates += signal_sql(model, as_of)
    extra = "".join(f",\n                   {a}" for a in aggregates)
    profile_sql = "SELECT NULL::VARCHAR AS user_key, NULL::VARCHAR AS email LIMIT 0"
    if profiles:
        profile_sql = f"SELECT user_key, lower(email) AS email FROM read_parquet({_lit(profiles)})"
    free = "[" + ", ".join(_lit(d) for d in free_email_domains) + "]::VARCHAR[]"
    sql = f"""
        WITH raw AS (
            SELECT source, user_key, device_id, email, account_key, event_name, ts, properties
            FROM read_parquet({_lit(events_glob)}, hive_partitioning = false,
                              union_by_name = true)
            WHERE ts < {_ts(as_of)}
        ), merged AS (
            SELECT device_id, arg_max(user_key, ts) AS merged_user
            FROM raw WHERE device_id IS NOT NULL AND user_key NOT LIKE '$device:%'
            GROUP BY device_id
        ), ev AS (
            SELECT coalesce(CASE WHEN r.user_key LIKE '$device:%' THEN m.merged_user END,
                            r.user_key) AS user_key,
                   r.source, r.email, r.account_key, r.event_name, r.ts, r.properties
            FROM raw r LEFT JOIN merged m USING (device_id)
        ), u AS (
            SELECT user_key,
                   arg_max(email, ts) FILTER (WHERE email IS NOT NULL) AS event_email,
                   arg_max(account_key, ts) FILTER (WHERE account_key IS NOT NULL) AS group_key,
                   arg_max(json_extract_string(properties, '$.plan'), ts)
                       FILTER (WHERE json_extract_string(properties, '$.plan') IS NOT NULL)
                       AS event_plan,
                   arg_min(source, ts) AS source,  -- where the user was first seen
                   min(ts) AS first_seen,
                   max(ts) AS last_seen{extra}
            FROM ev WHERE user_key NOT LIKE '$device:%' GROUP BY user_key
        ), p AS ({profile_sql}
        ), u2 AS (
            SELECT u.* EXCLUDE (event_email), coalesce(u.event_email, p.email) AS email
            FROM u LEFT JOIN p USING (user_key)
        )
        SELECT u.*,
               epoch({_ts(as_of)} - last_seen) / 86400.0 AS days_since_last_seen,
               epoch({_ts(as_of)} - first_seen) / 86400.0 AS days_since_first_seen,
               split_part(email, '@', 2) AS email_domain,
               coalesce(email IS NOT NULL AND list_contains({free}, split_part(email, '@', 2)),
                        false) AS free_email,
               coalesce(group_key,
                        CASE WHEN NOT list_contains({free}, split_part(email, '@', 2))
                             THEN split_part(email, '@', 2) END) AS account_key
        FROM u2 AS u ORDER BY user_key
    """
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(sql).to_arrow_table().to_pandas()
    finally:
        con.close()
