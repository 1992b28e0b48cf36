"""Point-in-time user features: as of T, only events before T are read.

The catalogue (config `features`) gives every model the same named columns: counts per tracked
event and window (`core_feature_used_14d`), distinct property values (`integrations_30d`), active
days (`active_days_7d`), recency (`days_since_last_seen`), free email and, joined later by
enrich.join, firmographics. A weighted model adds one column per signal (s0, s1, ...; with time
decay, s0 is the decayed sum and s0_n the plain count).

One query, written once (`feature_sql`), in two SQL dialects: DuckDB over the Parquet lake
(here, the default) and Spark SQL (pql.features_spark, `features.engine: spark`). A `Dialect`
holds the few spellings that differ; `output_schema` is the frame both engines return. The same
query also gives only some users' rows (`users`), or theirs at many moments at once (`as_of` a
frame of (user_key, as_of) pairs), exactly as the whole frame at each moment would hold them.

Long because the one query for both engines is the point: split, the two dialects would drift.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pyarrow as pa

from pql.config import ActiveDaysSignal, EventSignal, Features, WeightedModel, slug

DEVICE = "$device:%"  # user keys of anonymous (not yet identified) devices
EVENT_COLUMNS = "source, user_key, device_id, email, account_key, event_name, ts, properties"
MICROSECOND = timedelta(microseconds=1)

# One moment (features as of it), or a frame of (user_key, as_of) pairs (each user as of each).
When = datetime | pd.DataFrame


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


@dataclass(frozen=True)
class AsOf:
    """`as_of` in SQL: one moment (a literal), or (`moment` None) each row's own, the column
    `as_of` of (user, moment) pairs. Both are exact to the microsecond in both engines."""

    d: Dialect
    moment: pd.Timestamp | None = None

    @classmethod
    def of(cls, as_of: When, d: Dialect) -> AsOf:
        return cls(d, None) if isinstance(as_of, pd.DataFrame) else cls(d, as_utc(as_of))

    def _micros(self) -> str:
        if self.moment is None:
            return f"{self.d.micros}(as_of)"
        return str(self.moment.value // 1000)

    def within(self, days: float, ts: str = "ts") -> str:
        """`ts` is at most `days` before as_of (the window's first microsecond included)."""
        if self.moment is None:  # integers: no time zone or interval rules in the way
            span = timedelta(days=days) // MICROSECOND
            return f"{self.d.micros}({ts}) >= {self._micros()} - {span}"
        return f"{ts} >= {self.d.ts(self.moment - timedelta(days=days))}"

    def days_since(self, ts: str) -> str:
        """Days (fractional) from `ts` to as_of."""
        return f"({self._micros()} - {self.d.micros}({ts})) / 86400e6"


def catalogue_sql(features: Features, as_of: When, d: Dialect = DUCKDB) -> list[Column]:
    """The aggregates of the feature catalogue over the events `ev` before `as_of`."""
    at = AsOf.of(as_of, d)
    out = []
    for w in features.windows:
        for e in features.events:
            where = f"event_name = {d.lit(e)} AND {at.within(w)}"
            out.append(Column(f"{slug(e)}_{w}d", f"count(*) FILTER (WHERE {where})", COUNT))
        for f in features.distinct:
            value = f"{d.json_text}(properties, {d.lit('$.' + f.property)})"
            where = f"event_name = {d.lit(f.event)} AND {at.within(w)}"
            out.append(Column(f"{f.name}_{w}d", d.count_distinct(value, where), COUNT))
        days = d.count_distinct("CAST(ts AS DATE)", at.within(w))
        out.append(Column(f"active_days_{w}d", days, COUNT))
    return out


def signal_sql(model: WeightedModel, as_of: When, d: Dialect = DUCKDB) -> list[Column]:
    """One column per windowed signal of a weighted model (decayed sum and count if decaying)."""
    at = AsOf.of(as_of, d)
    out = []
    for i, s in enumerate(model.signals):
        col = signal_column(i)
        since = at.within(getattr(s, "window_days", 0))
        if isinstance(s, EventSignal):
            where = f"event_name = {d.lit(s.event)} AND {since}"
            if s.half_life_days:
                age = at.days_since("ts")
                decayed = f"sum(pow(0.5, {age} / CAST({s.half_life_days} AS DOUBLE)))"
                out.append(Column(col, f"{decayed} FILTER (WHERE {where})", REAL))
                out.append(Column(f"{col}_n", f"count(*) FILTER (WHERE {where})", COUNT))
            else:
                out.append(Column(col, f"count(*) FILTER (WHERE {where})", COUNT))
        elif isinstance(s, ActiveDaysSignal):
            days = d.count_distinct("CAST(ts AS DATE)", since)
            out.append(Column(col, days, COUNT))
    return out


def aggregates(
    features: Features, as_of: When, model: WeightedModel | None, d: Dialect
) -> list[Column]:
    out = catalogue_sql(features, as_of, d)
    if isinstance(model, WeightedModel):
        out += signal_sql(model, as_of, d)
    return out


def output_schema(columns: list[Column], pairs: bool = False) -> pa.Schema:
    """The frame's columns and types, whichever engine computed it (with `as_of` for pairs)."""
    text, moment = pa.string(), pa.timestamp("us", tz="UTC")
    head = [("user_key", text)] + ([("as_of", moment)] if pairs else [])
    head += [("group_key", text), ("event_plan", text), ("source", text)]
    head += [("first_seen", moment), ("last_seen", moment)]
    tail = [("email", text), ("days_since_last_seen", REAL), ("days_since_first_seen", REAL)]
    tail += [("email_domain", text), ("free_email", pa.bool_()), ("account_key", text)]
    return pa.schema(head + [(c.name, c.type) for c in columns] + tail)


def feature_sql(
    d: Dialect,
    events: str,
    as_of: When,
    columns: list[Column],
    free_email_domains: list[str],
    profiles: str | None = None,
    *,
    users: Sequence[str] | None = None,
    given: str | None = None,
) -> str:
    """The whole point-in-time query in dialect `d`.

    `events` is a relation of canonical events (a table function or a view), `profiles` one of
    (user_key, email), if any. Identity: anonymous events ('$device:...') join the user their
    device was last identified as before `as_of` (ID merge); devices never identified are left
    out. Email: the latest one on the user's events, else their profile's. Account: group key,
    else the email's domain unless it is a free-mail domain. Plan: the latest `plan` property on
    the user's events. Ties on time are broken by value, so both engines pick the same row.

    `users`: only their rows, the same as in the whole frame (only their events are read, and
    all those carrying a device one of them was identified on: its last identified user owns
    it). `as_of` a frame of (user_key, as_of) pairs: one row per pair whose user was seen before
    its moment, as of that moment (column `as_of`), its users only. `given`: a relation holding
    the users (user_key) or the pairs, if the caller registered one (long literal lists are
    slow to parse); else they are written into the query. `columns`: `aggregates` of `as_of`.
    """
    at = AsOf.of(as_of, d)
    end, pairs = at.moment, at.moment is None
    if pairs:
        if as_of.empty:
            raise ValueError("no (user_key, as_of) pairs to compute features for")
        end = as_utc(pd.to_datetime(as_of["as_of"], utc=True).max())
        if not given:
            rows = ", ".join(f"({d.lit(u)}, {d.ts(t)})" for u, t in _pairs(as_of))
            given = f"(VALUES {rows}) AS v(user_key, as_of)"
        wanted = f"""pairs AS (
            SELECT DISTINCT user_key AS pair_user, as_of FROM {given}
        ), wanted AS (SELECT DISTINCT pair_user AS user_key FROM pairs), """
    elif users is not None:
        if not len(users):
            raise ValueError("no users to compute features for")
        if not given:
            given = f"(VALUES {', '.join(f'({d.lit(u)})' for u in users)}) AS v(user_key)"
        wanted = f"wanted AS (SELECT user_key FROM {given}), "
    q = d.ident
    device = d.lit(DEVICE)
    plan = f"{d.json_text}(r.properties, {d.lit('$.plan')})"
    of_ev = f"r.source, r.email, r.account_key, r.event_name, r.ts, r.properties, {plan} AS plan"

    def latest(col: str) -> str:
        return f"max_by({col}, {d.row}(ts, {col})) FILTER (WHERE {col} IS NOT NULL)"

    if not pairs and users is None:
        head = f"""raw AS (
            SELECT {EVENT_COLUMNS} FROM {events} WHERE ts < {d.ts(end)}
        )"""
    else:
        head = wanted + _subset_sql(d, events, end)
    if not pairs:
        head += f""", merged AS (
            SELECT device_id, max_by(user_key, {d.row}(ts, user_key)) AS merged_user
            FROM raw WHERE device_id IS NOT NULL AND user_key NOT LIKE {device}
            GROUP BY device_id
        ), ev AS (
            SELECT coalesce(CASE WHEN r.user_key LIKE {device} THEN m.merged_user END,
                            r.user_key) AS user_key, {of_ev}
            FROM raw r LEFT JOIN merged m ON r.device_id = m.device_id"""
    else:
        # Per pair, whom each of its user's devices was last identified as before the moment
        # (only devices with anonymous events matter: identified events stay their user's).
        head += f""", merged AS (
            SELECT p.pair_user, p.as_of, r.device_id,
                   max_by(r.user_key, {d.row}(r.ts, r.user_key)) AS merged_user
            FROM pairs p JOIN own o ON o.user_key = p.pair_user
            JOIN raw r ON r.device_id = o.device_id AND r.ts < p.as_of
            WHERE r.user_key NOT LIKE {device}
              AND o.device_id IN (SELECT device_id FROM raw WHERE user_key LIKE {device})
            GROUP BY p.pair_user, p.as_of, r.device_id
        ), ev AS (
            SELECT p.pair_user AS user_key, p.as_of, {of_ev}
            FROM pairs p JOIN raw r ON r.user_key = p.pair_user AND r.ts < p.as_of
            UNION ALL
            SELECT m.pair_user AS user_key, m.as_of, {of_ev}
            FROM merged m JOIN raw r ON r.device_id = m.device_id AND r.ts < m.as_of
            WHERE m.merged_user = m.pair_user AND r.user_key LIKE {device}"""
    moment = ", as_of" if pairs else ""
    only = "" if users is None and not pairs else " AND user_key IN (SELECT user_key FROM wanted)"
    aggs = "".join(f",\n            {c.sql} AS {q(c.name)}" for c in columns)
    names = "".join(f", {q(c.name)}" for c in columns)
    free = ", ".join(d.lit(x) for x in free_email_domains)
    is_free = f"email_domain IN ({free})" if free else "false"
    email, join, p = "u.event_email", "", ""
    if profiles:  # one email per user, however many sources have a profile for them
        email, join = "coalesce(u.event_email, p.email)", "LEFT JOIN p ON u.user_key = p.user_key"
        p = f"""), p AS (
            SELECT user_key, min(lower(email)) AS email FROM {profiles}
            WHERE email IS NOT NULL{only} GROUP BY user_key"""
    return f"""
        WITH {head}
        ), u AS (
            SELECT user_key{moment},
                   {latest("email")} AS event_email,
                   {latest("account_key")} AS group_key,
                   {latest("plan")} AS event_plan,
                   min_by(source, {d.row}(ts, source)) FILTER (WHERE source IS NOT NULL)
                       AS source,  -- where the user was first seen
                   min(ts) AS first_seen,
                   max(ts) AS last_seen{aggs}
            FROM ev WHERE user_key NOT LIKE {device}{only} GROUP BY user_key{moment}
        {p}), u2 AS (
            SELECT u.*, {email} AS email FROM u {join}
        ), u3 AS (
            SELECT u2.*, split_part(email, '@', 2) AS email_domain FROM u2
        )
        SELECT user_key{moment}, group_key, event_plan, source, first_seen, last_seen{names},
               email,
               {at.days_since("last_seen")} AS days_since_last_seen,
               {at.days_since("first_seen")} AS days_since_first_seen,
               email_domain,
               coalesce(email IS NOT NULL AND {is_free}, false) AS free_email,
               coalesce(group_key,
                        CASE WHEN NOT ({is_free}) THEN email_domain END) AS account_key
        FROM u3 ORDER BY user_key{moment}
    """


def _subset_sql(d: Dialect, events: str, end: pd.Timestamp) -> str:
    """CTEs `own` (the devices the users of `wanted` were identified on before `end`) and `raw`
    (events before `end` of those users, or carrying those devices whoever sent them)."""
    return f"own AS ({_own_sql(d, events, end)}), raw AS ({_raw_sql(d, events, end, 'own')})"


def _own_sql(d: Dialect, events: str, end: pd.Timestamp) -> str:
    return f"""
            SELECT DISTINCT user_key, device_id FROM {events}
            WHERE ts < {d.ts(end)} AND device_id IS NOT NULL
              AND user_key IN (SELECT user_key FROM wanted)"""


def _raw_sql(d: Dialect, events: str, end: pd.Timestamp, own: str) -> str:
    return f"""
            SELECT {EVENT_COLUMNS} FROM {events}
            WHERE ts < {d.ts(end)} AND (user_key IN (SELECT user_key FROM wanted)
                                        OR device_id IN (SELECT device_id FROM {own}))"""


def _pairs(as_of: pd.DataFrame) -> list[tuple[str, pd.Timestamp]]:
    """The (user_key, as_of) pairs, moments in UTC."""
    moments = pd.to_datetime(as_of["as_of"], utc=True)
    return list(zip(as_of["user_key"].astype(str), moments, strict=True))


def to_frame(table: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    """An engine's result as the frame every model reads (same columns and dtypes)."""
    return table.select(schema.names).cast(schema).to_pandas()


def user_features(
    events: str,
    as_of: When,
    features: Features,
    free_email_domains: list[str],
    *,
    profiles: str | None = None,
    model: WeightedModel | None = None,
    users: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per identified user seen before `as_of` (DuckDB): identity, catalogue, signals.

    `events`: a Parquet glob of canonical events. `profiles`: a Parquet glob of (user_key,
    email). `users`: only their rows, exactly as in the whole frame. `as_of` a frame of
    (user_key, as_of) pairs: one row per pair (its user seen before its moment) as of its
    moment, column `as_of` after user_key. See `feature_sql` for the rules.
    """
    con = _connect()
    try:
        relation = _parquet(events)
        return _features(con, relation, as_of, features, free_email_domains, profiles, model, users)
    finally:
        con.close()


class UserEvents:
    """Some users' events, read from the lake once into memory (DuckDB): their own and all
    those carrying a device one of them was identified on, before `before`. `features` gives
    these users' rows as of any moments up to `before` exactly as over the whole lake."""

    def __init__(
        self,
        events_glob: str,
        users: Sequence[str],
        before: datetime,
        features: Features,
        model: WeightedModel | None = None,
    ):
        self.catalogue, self.model = features, model
        end, src, d = as_utc(before), _parquet(events_glob), DUCKDB
        self._con = _connect()
        try:
            self._con.register("pql_given", _given_table(None, users))
            wanted = "WITH wanted AS (SELECT user_key FROM pql_given) "
            # The devices first, into a table: one pass testing both memberships costs more.
            self._con.execute(f"CREATE TEMP TABLE pql_own AS {wanted}{_own_sql(d, src, end)}")
            raw = _raw_sql(d, src, end, "pql_own")
            self._con.execute(f"CREATE TEMP TABLE pql_user_events AS {wanted}{raw}")
            self._con.unregister("pql_given")
        except BaseException:
            self._con.close()
            raise

    def table(self, columns: Sequence[str] = ("user_key", "device_id", "ts")) -> pa.Table:
        return self._con.sql(f"SELECT {', '.join(columns)} FROM pql_user_events").to_arrow_table()

    def features(
        self,
        as_of: When,
        free_email_domains: list[str],
        *,
        profiles: str | None = None,
        users: Sequence[str] | None = None,
        columns: Collection[str] | None = None,
    ) -> pd.DataFrame:
        """`user_features` of these users (or of `users` among them, or of pairs); of the
        aggregates, only `columns` if given (a model reading no others scores the same)."""
        args = (free_email_domains, profiles, self.model, users, columns)
        return _features(self._con, "pql_user_events", as_of, self.catalogue, *args)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> UserEvents:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _parquet(glob: str) -> str:
    return f"read_parquet({DUCKDB.lit(glob)}, hive_partitioning = false, union_by_name = true)"


def _features(
    con: duckdb.DuckDBPyConnection,
    events: str,
    as_of: When,
    features: Features,
    free_email_domains: list[str],
    profiles: str | None,
    model: WeightedModel | None,
    users: Sequence[str] | None,
    only: Collection[str] | None = None,
) -> pd.DataFrame:
    """The feature frame on DuckDB connection `con` over its relation `events` (of the
    aggregates, those in `only`, if given)."""
    pairs = isinstance(as_of, pd.DataFrame)
    columns = aggregates(features, as_of, model, DUCKDB)
    if only is not None:
        columns = [c for c in columns if c.name in only]
    schema = output_schema(columns, pairs)
    if (pairs and as_of.empty) or (users is not None and not len(users)):
        return to_frame(schema.empty_table(), schema)
    given = None
    if pairs or users is not None:  # a table: long literal lists are slow to parse
        given = "pql_given"
        con.register(given, _given_table(as_of if pairs else None, users))
    try:
        prof = f"read_parquet({DUCKDB.lit(profiles)})" if profiles else None
        free = free_email_domains
        sql = feature_sql(DUCKDB, events, as_of, columns, free, prof, users=users, given=given)
        return to_frame(con.sql(sql).to_arrow_table(), schema)
    finally:
        if given:
            con.unregister(given)


def _given_table(pairs: pd.DataFrame | None, users: Sequence[str] | None) -> pa.Table:
    """The pairs (user_key, as_of), else the users (user_key), as a table DuckDB can join."""
    if pairs is not None:
        moments = pd.to_datetime(pairs["as_of"], utc=True).astype("datetime64[us, UTC]")
        return pa.table({"user_key": pairs["user_key"].astype(str), "as_of": moments})
    return pa.table({"user_key": pa.array([str(u) for u in users], pa.string())})
