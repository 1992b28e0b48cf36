"""Point-in-time user features: as of T, only events before T are read.

The catalogue (config `features`) gives every model the same named columns: counts per tracked
event and window (`core_feature_used_14d`), distinct property values (`integrations_30d`), active
days (`active_days_7d`), recency (`days_since_last_seen`), free email and, joined later by
enrich.join, firmographics. A weighted model adds one column per signal (s0, s1, ...; with time
decay, s0 is the decayed sum and s0_n the plain count).

One query, written once (`feature_sql`), in two SQL dialects: DuckDB over the Parquet lake
(here, the default) and Spark SQL (pql.features_spark, `features.engine: spark`). A `Dialect`
holds the few spellings that differ; `output_schema` is the frame both engines return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pyarrow as pa

from pql.config import ActiveDaysSignal, EventSignal, Features, WeightedModel, slug

DEVICE = "$device:%"  # user keys of anonymous (not yet identified) devices


@dataclass(frozen=True)
class Dialect:
    """What differs between the engines' SQL; everything else in the query is shared."""

    name: str
    timestamp: str  # type of a UTC timestamp literal
    json_text: str  # (json, path) → the value as text
    micros: str  # timestamp → microseconds since the epoch
    row: str  # (a, b) → a struct ordered by a then b (a deterministic arg_max key)
    quote: str  # identifier quote
    backslash_escapes: bool  # string literals treat \ as an escape
    # Distinct non-null values of {x} among the rows where {where} holds. Spark plans every
    # count(DISTINCT) with its own FILTER as one more copy of the input (Expand); a set per
    # group is one pass.
    distinct: str

    def lit(self, value: str) -> str:
        text = str(value)
        if self.backslash_escapes:
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return "'" + text.replace("'", "''") + "'"

    def ident(self, name: str) -> str:
        return self.quote + name.replace(self.quote, self.quote * 2) + self.quote

    def ts(self, moment: pd.Timestamp) -> str:
        return f"{self.timestamp} {self.lit(moment.isoformat())}"

    def count_distinct(self, x: str, where: str) -> str:
        return self.distinct.format(x=x, where=where)


DUCKDB = Dialect(
    name="duckdb",
    timestamp="TIMESTAMPTZ",
    json_text="json_extract_string",
    micros="epoch_us",
    row="row",
    quote='"',
    backslash_escapes=False,
    distinct="count(DISTINCT {x}) FILTER (WHERE {where})",
)
SPARK = Dialect(
    name="spark",
    timestamp="TIMESTAMP",
    json_text="get_json_object",
    micros="unix_micros",
    row="struct",
    quote="`",
    backslash_escapes=True,
    distinct="size(collect_set({x}) FILTER (WHERE {where}))",
)


@dataclass(frozen=True)
class Column:
    """One aggregate of the feature frame: its name, its SQL (without alias) and its type."""

    name: str
    sql: str
    type: pa.DataType


COUNT, REAL = pa.int64(), pa.float64()


def signal_column(i: int) -> str:
    return f"s{i}"


def as_utc(moment: datetime) -> pd.Timestamp:
    t = pd.Timestamp(moment)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _days_before(d: Dialect, as_of: pd.Timestamp, ts: str) -> str:
    """Days (fractional) from `ts` to `as_of`, exact to the microsecond in both engines."""
    return f"({as_of.value // 1000} - {d.micros}({ts})) / 86400e6"


def catalogue_sql(features: Features, as_of: datetime, d: Dialect = DUCKDB) -> list[Column]:
    """The aggregates of the feature catalogue over the events `ev` before `as_of`."""
    as_of = as_utc(as_of)
    out = []
    for w in features.windows:
        since = d.ts(as_of - timedelta(days=w))
        for e in features.events:
            where = f"event_name = {d.lit(e)} AND ts >= {since}"
            out.append(Column(f"{slug(e)}_{w}d", f"count(*) FILTER (WHERE {where})", COUNT))
        for f in features.distinct:
            value = f"{d.json_text}(properties, {d.lit('$.' + f.property)})"
            where = f"event_name = {d.lit(f.event)} AND ts >= {since}"
            out.append(Column(f"{f.name}_{w}d", d.count_distinct(value, where), COUNT))
        days = d.count_distinct("CAST(ts AS DATE)", f"ts >= {since}")
        out.append(Column(f"active_days_{w}d", days, COUNT))
    return out


def signal_sql(model: WeightedModel, as_of: datetime, d: Dialect = DUCKDB) -> list[Column]:
    """One column per windowed signal of a weighted model (decayed sum and count if decaying)."""
    as_of = as_utc(as_of)
    out = []
    for i, s in enumerate(model.signals):
        col = signal_column(i)
        since = d.ts(as_of - timedelta(days=getattr(s, "window_days", 0)))
        if isinstance(s, EventSignal):
            where = f"event_name = {d.lit(s.event)} AND ts >= {since}"
            if s.half_life_days:
                age = _days_before(d, as_of, "ts")
                decayed = f"sum(pow(0.5, {age} / CAST({s.half_life_days} AS DOUBLE)))"
                out.append(Column(col, f"{decayed} FILTER (WHERE {where})", REAL))
                out.append(Column(f"{col}_n", f"count(*) FILTER (WHERE {where})", COUNT))
            else:
                out.append(Column(col, f"count(*) FILTER (WHERE {where})", COUNT))
        elif isinstance(s, ActiveDaysSignal):
            days = d.count_distinct("CAST(ts AS DATE)", f"ts >= {since}")
            out.append(Column(col, days, COUNT))
    return out


def aggregates(
    features: Features, as_of: datetime, model: WeightedModel | None, d: Dialect
) -> list[Column]:
    out = catalogue_sql(features, as_of, d)
    if isinstance(model, WeightedModel):
        out += signal_sql(model, as_of, d)
    return out


def output_schema(columns: list[Column]) -> pa.Schema:
    """The frame's columns and types, whichever engine computed it."""
    text, moment = pa.string(), pa.timestamp("us", tz="UTC")
    head = [("user_key", text), ("group_key", text), ("event_plan", text), ("source", text)]
    head += [("first_seen", moment), ("last_seen", moment)]
    tail = [("email", text), ("days_since_last_seen", REAL), ("days_since_first_seen", REAL)]
    tail += [("email_domain", text), ("free_email", pa.bool_()), ("account_key", text)]
    return pa.schema(head + [(c.name, c.type) for c in columns] + tail)


def feature_sql(
    d: Dialect,
    events: str,
    as_of: datetime,
    columns: list[Column],
    free_email_domains: list[str],
    profiles: str | None = None,
) -> str:
    """The whole point-in-time query in dialect `d`.

    `events` is a relation of canonical events (a table function or a view), `profiles` one of
    (user_key, email), if any. Identity: anonymous events ('$device:...') join the user their
    device was last identified as before `as_of` (ID merge); devices never identified are left
    out. Email: the latest one on the user's events, else their profile's. Account: group key,
    else the email's domain unless it is a free-mail domain. Plan: the latest `plan` property on
    the user's events. Ties on time are broken by value, so both engines pick the same row.
    """
    as_of = as_utc(as_of)
    q = d.ident
    device = d.lit(DEVICE)
    plan = f"{d.json_text}(r.properties, {d.lit('$.plan')})"

    def latest(col: str) -> str:
        return f"max_by({col}, {d.row}(ts, {col})) FILTER (WHERE {col} IS NOT NULL)"

    aggs = "".join(f",\n            {c.sql} AS {q(c.name)}" for c in columns)
    names = "".join(f", {q(c.name)}" for c in columns)
    free = ", ".join(d.lit(x) for x in free_email_domains)
    is_free = f"email_domain IN ({free})" if free else "false"
    email, join, p = "u.event_email", "", ""
    if profiles:  # one email per user, however many sources have a profile for them
        email, join = "coalesce(u.event_email, p.email)", "LEFT JOIN p ON u.user_key = p.user_key"
        p = f"""), p AS (
            SELECT user_key, min(lower(email)) AS email FROM {profiles}
            WHERE email IS NOT NULL GROUP BY user_key"""
    return f"""
        WITH raw AS (
            SELECT source, user_key, device_id, email, account_key, event_name, ts, properties
            FROM {events}
            WHERE ts < {d.ts(as_of)}
        ), merged AS (
            SELECT device_id, max_by(user_key, {d.row}(ts, user_key)) AS merged_user
            FROM raw WHERE device_id IS NOT NULL AND user_key NOT LIKE {device}
            GROUP BY device_id
        ), ev AS (
            SELECT coalesce(CASE WHEN r.user_key LIKE {device} THEN m.merged_user END,
                            r.user_key) AS user_key,
                   r.source, r.email, r.account_key, r.event_name, r.ts, r.properties,
                   {plan} AS plan
            FROM raw r LEFT JOIN merged m ON r.device_id = m.device_id
        ), u AS (
            SELECT user_key,
                   {latest("email")} AS event_email,
                   {latest("account_key")} AS group_key,
                   {latest("plan")} AS event_plan,
                   min_by(source, {d.row}(ts, source)) FILTER (WHERE source IS NOT NULL)
                       AS source,  -- where the user was first seen
                   min(ts) AS first_seen,
                   max(ts) AS last_seen{aggs}
            FROM ev WHERE user_key NOT LIKE {device} GROUP BY user_key
        {p}), u2 AS (
            SELECT u.*, {email} AS email FROM u {join}
        ), u3 AS (
            SELECT u2.*, split_part(email, '@', 2) AS email_domain FROM u2
        )
        SELECT user_key, group_key, event_plan, source, first_seen, last_seen{names}, email,
               {_days_before(d, as_of, "last_seen")} AS days_since_last_seen,
               {_days_before(d, as_of, "first_seen")} AS days_since_first_seen,
               email_domain,
               coalesce(email IS NOT NULL AND {is_free}, false) AS free_email,
               coalesce(group_key,
                        CASE WHEN NOT ({is_free}) THEN email_domain END) AS account_key
        FROM u3 ORDER BY user_key
    """


def to_frame(table: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    """An engine's result as the frame every model reads (same columns and dtypes)."""
    return table.select(schema.names).cast(schema).to_pandas()


def user_features(
    events_glob: str,
    as_of: datetime,
    features: Features,
    free_email_domains: list[str],
    *,
    profiles: str | None = None,
    model: WeightedModel | None = None,
) -> pd.DataFrame:
    """One row per identified user seen before `as_of` (DuckDB): identity, catalogue, signals.

    `profiles`: a Parquet glob of (user_key, email). See `feature_sql` for the rules.
    """
    columns = aggregates(features, as_of, model, DUCKDB)
    events = (
        f"read_parquet({DUCKDB.lit(events_glob)}, hive_partitioning = false, union_by_name = true)"
    )
    prof = f"read_parquet({DUCKDB.lit(profiles)})" if profiles else None
    sql = feature_sql(DUCKDB, events, as_of, columns, free_email_domains, prof)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return to_frame(con.sql(sql).to_arrow_table(), output_schema(columns))
    finally:
        con.close()
