"""Point-in-time user features in DuckDB: as of T, only events before T are read."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from pql.config import ActiveDaysSignal, EventSignal, WeightedModel


def signal_column(i: int) -> str:
    return f"s{i}"


def user_features(
    events_glob: str,
    as_of: datetime,
    model: WeightedModel,
    free_email_domains: list[str],
    profiles: str | None = None,
) -> pd.DataFrame:
    """One row per identified user seen before `as_of`, with identity and one column per signal.

    Identity: anonymous events ('$device:...') join the user their device was later identified
    as (ID merge, known before `as_of`); devices never identified are left out. Email: the
    latest one on the user's events, else their profile's (`profiles`: Parquet of user_key,
    email). Account: group key, else the email's domain unless it is a free-mail domain.
    """
    selects, params = [], [as_of]
    for i, s in enumerate(model.signals):
        col = signal_column(i)
        if isinstance(s, EventSignal):
            selects.append(f"count(*) FILTER (WHERE event_name = ? AND ts >= ?) AS {col}")
            params += [s.event, as_of - pd.Timedelta(days=s.window_days)]
        elif isinstance(s, ActiveDaysSignal):
            selects.append(f"count(DISTINCT CAST(ts AS DATE)) FILTER (WHERE ts >= ?) AS {col}")
            params.append(as_of - pd.Timedelta(days=s.window_days))
    signal_sql = "".join(f",\n               {s}" for s in selects)
    profile_sql = "SELECT NULL::VARCHAR AS user_key, NULL::VARCHAR AS email LIMIT 0"
    if profiles:
        profile_sql = f"SELECT user_key, lower(email) AS email FROM read_parquet('{profiles}')"
    sql = f"""
        WITH raw AS (
            SELECT user_key, device_id, email, account_key, event_name, ts
            FROM read_parquet(?, hive_partitioning = false, union_by_name = true)
            WHERE ts < ?
        ), merged AS (
            SELECT device_id, arg_max(user_key, ts) AS merged_user
            FROM raw WHERE device_id IS NOT NULL AND user_key NOT LIKE '$device:%'
            GROUP BY device_id
        ), ev AS (
            SELECT coalesce(CASE WHEN r.user_key LIKE '$device:%' THEN m.merged_user END,
                            r.user_key) AS user_key,
                   r.email, r.account_key, r.event_name, r.ts
            FROM raw r LEFT JOIN merged m USING (device_id)
        ), u AS (
            SELECT user_key,
                   arg_max(email, ts) FILTER (WHERE email IS NOT NULL) AS event_email,
                   arg_max(account_key, ts) FILTER (WHERE account_key IS NOT NULL) AS group_key,
                   min(ts) AS first_seen,
                   max(ts) AS last_seen{signal_sql}
            FROM ev WHERE user_key NOT LIKE '$device:%' GROUP BY user_key
        ), p AS ({profile_sql}
        ), u2 AS (
            SELECT u.* EXCLUDE (event_email), coalesce(u.event_email, p.email) AS email
            FROM u LEFT JOIN p USING (user_key)
        )
        SELECT u.*,
               split_part(email, '@', 2) AS email_domain,
               coalesce(email IS NOT NULL AND list_contains(?, split_part(email, '@', 2)), false)
                   AS free_email,
               coalesce(group_key,
                        CASE WHEN NOT list_contains(?, split_part(email, '@', 2))
                             THEN split_part(email, '@', 2) END) AS account_key
        FROM u2 AS u ORDER BY user_key
    """
    # Parameters bind in order: the glob and cut-off of `ev`, then each signal's, then the lists.
    ordered = [events_glob, as_of] + params[1:] + [free_email_domains, free_email_domains]
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(sql, params=ordered).to_arrow_table().to_pandas()
    finally:
        con.close()
