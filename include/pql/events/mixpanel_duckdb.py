"""Mixpanel raw export → canonical Parquet in DuckDB: streaming, bounded memory, every line counted.

A drop-in for `mixpanel_lines.to_canonical` (same signature, reasons, files and counts) doing the
per-line work as vectorised DuckDB SQL instead of a Python loop:

1. **Read.** ISA-L inflates the gzip file in 4 MiB blocks (in its own thread, checking every
   member's CRC) and Python cuts each block into numbered lines with one Arrow call, never line
   by line. The lines are the old path's: universal newlines, undecodable bytes read as U+FFFD,
   blank lines skipped but numbered. DuckDB's own `read_csv` was tried and rejected: it cannot
   number lines, silently cuts a line at its delimiter, misnumbers rejected lines and does not
   check the CRC.
2. **Classify and convert** in one streaming query, on all cores while the reader feeds it: one
   JSON parse per line extracts every field, a CASE gives the quarantine reason in the old path's
   order, times become microseconds with `datetime.fromtimestamp`'s rounding. The result is
   staged as Parquet. The rare events without a usable $insert_id get the old path's content
   hash from a Python function that DuckDB calls for those rows only.
3. **Deduplicate** on Mixpanel's key (event, distinct_id, time, $insert_id), keeping the latest
   `mp_processing_time_ms`, then the later line. Only keys whose hash repeats are ranked.
4. **Write** `part-0.parquet` (zstd; SCHEMA; rows in no particular order, the day split sorts
   them) and the quarantined lines, in line order, to `lines.jsonl.gz`.

Memory stays flat: every step streams or spills past `memory_limit` into a folder in `out_dir`.
A broken gzip stream (cut short, corrupt, not gzip at all) is never data: downloads are checked
whole before they reach the lake, so a raw file that breaks here was damaged since, and
`IncompleteExport` says which file and after which line (the window must be extracted again).

Where this path deliberately differs from the old one, always on input Mixpanel does not send,
is listed in `DIFFERENCES`.

Long because the SQL, the line reader feeding it and the parity notes belong together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip_threaded

from pql.events import IncompleteExport, mixpanel_lines
from pql.events.canonical import SCHEMA, Counts

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
BLOCK_BYTES = 4 << 20  # inflated per read: big enough to amortise, small enough to stream
LINE_TOO_LARGE = "line too large"
BAD_INSERT_ID = "invalid '$insert_id'"
# zstd level 1 writes as fast as lz4, and within a few per cent of the default level's size.
_ZSTD = "COMPRESSION zstd, COMPRESSION_LEVEL 1"

DIFFERENCES = """\
- a line over max_line_bytes is quarantined as "line too large", its raw text cut to
  max_line_bytes bytes; the old path has no limit;
- a truthy $insert_id that is not a string or an integer (true, 1.5, a list, an object) is
  quarantined as "invalid '$insert_id'"; the old path makes its Python repr the event id;
- a boolean distinct_id is "missing distinct_id"; the old path takes it as the user "True";
- a $device_id that is a boolean, float, list or object gives no device_id; the old path stores
  its Python repr;
- DuckDB's JSON reader also accepts trailing commas and nan/inf in any letter case (such lines
  become events; the old path: "not valid JSON"), and rejects an unpaired UTF-16 surrogate
  escape ("not valid JSON"; the old path crashes writing Parquet);
- duplicate keys in one object: the first wins here, the last in the old path;
- emails are lower-cased by DuckDB, which has no Greek final sigma: "ΑΣ" → "ασ" (Python "ας");
- properties hold the same JSON but DuckDB spells it: 1e16 as 10000000000000000.0, \\u001F in
  upper case (realistic exports come out byte for byte the same);
- ties on the dedup key and mp_processing_time_ms keep the later line; the old path, any one.
"""

# Python's str.isspace() characters: blank lines and str.strip() as the old path sees them.
_PY_SPACE = (
    r"\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
    r"\x{202f}\x{205f}\x{3000}"
)
# Removed from properties, as the old path pops them; merge-patching them to null deletes them.
_POPPED = ("time", "distinct_id", "$insert_id")
_LINES = pa.schema([("n", pa.int64()), ("line", pa.large_string()), ("cut", pa.int64())])


class _Broken(Exception):
    """The gzip stream cannot be read past this point."""


def to_canonical(
    raw_path: Path,
    out_dir: Path,
    quarantine_dir: Path,
    *,
    source: str,
    email_properties: list[str],
    account_properties: list[str],
    memory_limit: str = "1GB",
    threads: int | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    stage_seconds: dict[str, float] | None = None,
) -> Counts:
    """Parse a raw export into deduplicated canonical Parquet in `out_dir`; returns the counts.

    Writes `out_dir/part-0.parquet` when any event survives and `quarantine_dir/lines.jsonl.gz`
    when any line is quarantined. Raises `IncompleteExport` on the server's
    'terminated early' line. `memory_limit` bounds DuckDB (it spills to a folder in `out_dir`).
    `stage_seconds`, when given, receives the wall time of each stage (for the benchmark).
    """
    clock = _Clock(stage_seconds)
    received = datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="_fastpath_", dir=out_dir))
    con = _connect(work, memory_limit, threads)
    try:
        lines = _Lines(Path(raw_path), max_line_bytes)
        con.register("lines", lines.reader())
        sql = _stage_sql(source, email_properties, account_properties, received)
        staged = work / "staged.parquet"
        con.execute(f"COPY ({sql}) TO '{_sql_path(staged)}' (FORMAT parquet, {_ZSTD})")
        con.unregister("lines")
        clock.lap("read, classify, convert, stage")
        rel = f"read_parquet('{_sql_path(staged)}')"
        reasons = dict(con.execute(f"SELECT reason, count(*) FROM {rel} GROUP BY ALL").fetchall())
        clock.lap("count reasons")
        if lines.broken:
            n, error = lines.broken
            raise IncompleteExport(
                f"{raw_path}: the gzip stream breaks after line {n - 1} ({error}): the raw "
                "export is not whole; extract its window again"
            )
        if reasons.pop("\x00terminated", 0):
            marker = mixpanel_lines.TRUNCATED_MARKER
            raise IncompleteExport(f"{raw_path}: export contains '{marker}'")
        good = reasons.pop(None, 0)
        counts = Counts(raw=good + sum(reasons.values()), reasons=dict(sorted(reasons.items())))
        counts.quarantined = sum(reasons.values())
        if good:
            counts.canonical = _dedupe(con, rel, good, out_dir / "part-0.parquet", clock)
        counts.duplicates = good - counts.canonical
        if counts.quarantined:
            _write_quarantine(con, rel, quarantine_dir / "lines.jsonl.gz")
            clock.lap("write quarantine")
        counts.check()
        return counts
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)


class _Clock:
    """Wall seconds per named stage into `into` (nothing when it is None)."""

    def __init__(self, into: dict[str, float] | None):
        self.into, self.last = into, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.into is not None:
            self.into[stage] = self.into.get(stage, 0.0) + now - self.last
        self.last = now


def _connect(work: Path, memory_limit: str, threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        config={
            "memory_limit": memory_limit,
            "threads": threads or os.cpu_count() or 1,
            "temp_directory": str(work / "spill"),
            # Row order is carried by the line number where it matters (quarantine, ties).
            "preserve_insertion_order": False,
        }
    )
    con.execute("SET TimeZone = 'UTC'")
    con.create_function(
        "mp_content_id", _content_ids, ["VARCHAR"], "VARCHAR", type="arrow", side_effects=False
    )
    con.execute(_MACROS.replace("{max_epoch}", str(mixpanel_lines.MAX_EPOCH_SECONDS)))
    return con


# ---------------------------------------------------------------------------------------------
# Reading: gzip → numbered lines, as the old path's `read_lines` saw them, in Arrow batches.


class _Lines:
    """The numbered text lines of a gzip export as Arrow batches (n, line, cut).

    `cut` is the byte length of a line longer than `max_line_bytes`, whose text is then only its
    first `max_line_bytes` bytes; NULL otherwise. After reading, `broken` is None, or the
    (line number, error) where the stream broke.
    """

    def __init__(self, path: Path, max_line_bytes: int):
        self.path, self.max_line_bytes = path, max_line_bytes
        self.count = 0
        self.broken: tuple[int, str] | None = None
        self._giant: int | None = None  # length so far of an over-long line being skipped
        self._head = b""  # and its first max_line_bytes bytes

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(_LINES, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        carry = b""
        try:
            for block in _inflate(self.path):
                data = carry + block if carry else block
                held = b""
                if b"\r" in data:  # universal newlines; a final \r may start a \r\n
                    if data.endswith(b"\r"):
                        data, held = data[:-1], b"\r"
                    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = self._grow(data) + held
                    continue
                body, carry = data[:cut], data[cut + 1 :] + held
                if self._giant is not None:  # the over-long line ends in this block
                    end = data.find(b"\n")
                    yield self._giant_line(end)
                    if end == cut:
                        continue
                    body = data[end + 1 : cut]
                yield self._batch(body)
        except _Broken as e:
            self.broken = (self.count + 1, str(e))
            log.warning("%s: gzip stream broken after line %s: %s", self.path, self.count, e)
            return
        if self._giant is not None:
            yield self._giant_line(0)
        elif carry:
            carry = carry.replace(b"\r", b"\n")
            yield self._batch(carry[:-1] if carry.endswith(b"\n") else carry)

    def _grow(self, data: bytes) -> bytes:
        """Carry a line with no end yet; past max_line_bytes keep only its start, and its length."""
        if self._giant is not None:
            self._giant += len(data)
            return b""
        if len(data) <= self.max_line_bytes:
            return data
        self._giant, self._head = len(data), data[: self.max_line_bytes]
        return b""

    def _giant_line(self, tail: int) -> pa.RecordBatch:
        size, head = self._giant + tail, self._head
        self._giant = None
        self.count += 1
        text = head.decode("utf-8", "ignore")  # the cut may split a character
        return pa.record_batch(
            [pa.array([self.count]), pa.array([text], pa.large_string()), pa.array([size])],
            schema=_LINES,
        )

    def _batch(self, body: bytes) -> pa.RecordBatch:
        if not body.isascii():
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:  # as the old path read it: errors="replace"
                body = body.decode("utf-8", "replace").encode()
        # Zero-copy: one big string, split by Arrow.
        whole = pa.Array.from_buffers(
            pa.large_string(),
            1,
            [None, pa.py_buffer(np.array([0, len(body)], np.int64)), pa.py_buffer(body)],
        )
        lines = pc.split_pattern(whole, "\n").values
        k = len(lines)
        numbers = pa.array(np.arange(self.count + 1, self.count + k + 1, dtype=np.int64))
        self.count += k
        cut = pa.nulls(k, pa.int64())
        if len(body) > self.max_line_bytes:
            sizes = pc.binary_length(lines)
            over = pc.greater(sizes, self.max_line_bytes)
            if pc.any(over).as_py():
                cut = pc.if_else(over, sizes, cut)
                lines = pa.array(
                    [
                        s.encode()[: self.max_line_bytes].decode("utf-8", "ignore") if big else s
                        for s, big in zip(lines.to_pylist(), over.to_pylist(), strict=True)
                    ],
                    pa.large_string(),
                )
        return pa.record_batch([numbers, lines, cut], schema=_LINES)


def _inflate(path: Path) -> Iterator[bytes]:
    """The inflated blocks of a (multi-member) gzip file; _Broken where it stops being readable."""
    if path.stat().st_size == 0:  # what gzip.open reads from an empty file: nothing, no error
        return
    try:
        with igzip_threaded.open(path, "rb", threads=1) as stream:
            while block := stream.read(BLOCK_BYTES):
                yield block
    except (OSError, EOFError, ValueError) as e:
        raise _Broken(str(e)) from e


def _content_ids(lines: pa.Array) -> pa.Array:
    """The old path's content hash, for the rare events without a usable $insert_id."""
    return pa.array([_content_id(line) for line in lines.to_pylist()], pa.string())


def _content_id(line: str) -> str:
    # Must stay byte-identical to mixpanel_lines._content_id: event ids in the lake use it.
    try:
        obj = json.loads(line)
    except ValueError:  # JSON only DuckDB reads (a trailing comma, 'nan'): hash the text
        return hashlib.sha1(line.encode()).hexdigest()
    props = dict(obj["properties"])
    t, user = props.pop("time"), props.pop("distinct_id")
    props.pop("$insert_id", None)
    parts = (obj["event"], user, t, props)
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# SQL: classify and convert every line, deduplicate, write.

# Macros are expanded textually, so each takes only column references: an expression passed in
# would be evaluated once per use. Hence the query below works in layers.
_MACROS = rf"""
-- The JSON type of a fragment written by DuckDB, from its first character: s(tring), o(bject),
-- a(rray), b(oolean), z (null) or # (number).
CREATE TEMP MACRO kind(f) AS CASE WHEN f IS NOT NULL THEN CASE left(f, 1)
    WHEN '"' THEN 's' WHEN '{{' THEN 'o' WHEN '[' THEN 'a' WHEN 't' THEN 'b' WHEN 'f' THEN 'b'
    WHEN 'n' THEN 'z' ELSE '#' END END;
-- Python parses a number as int unless it has a fraction or exponent (or is NaN/Infinity); big
-- integers stay digits in DuckDB's output, as they stay ints in Python.
CREATE TEMP MACRO is_int(f) AS NOT regexp_matches(f, '[.eEnN]');
CREATE TEMP MACRO str(f) AS json_extract_string(f, '$');
-- A list-valued property counts by its first element (the reference path's `first_value`).
CREATE TEMP MACRO first_item(f) AS
    CASE WHEN left(f, 1) = '[' THEN CAST(json_extract(f, '$[0]') AS VARCHAR) ELSE f END;
-- A string, or an integer as text, else NULL: what the reference path's `first_value` accepts.
CREATE TEMP MACRO text_of(f, k) AS
    CASE WHEN k = 's' THEN str(f) WHEN k = '#' AND is_int(f) THEN f END;
-- Python's str.strip().
CREATE TEMP MACRO py_strip(s) AS regexp_replace(s, '^[{_PY_SPACE}]+|[{_PY_SPACE}]+$', '', 'g');
-- The old path's plausible epoch seconds, and datetime.fromtimestamp(s, UTC) in microseconds
-- (the same half-even rounding of the fraction).
CREATE TEMP MACRO plausible(s) AS isfinite(s) AND s >= 0 AND s < {{max_epoch}};
CREATE TEMP MACRO seconds_to_us(s) AS
    CAST(trunc(s) AS BIGINT) * 1000000 + CAST(round_even((s - trunc(s)) * 1e6, 0) AS BIGINT);
"""


def _pointer(*keys: str) -> str:
    """A JSON pointer (RFC 6901), which takes any key, as a SQL literal."""
    path = "".join("/" + k.replace("~", "~0").replace("/", "~1") for k in keys)
    return "'" + path.replace("'", "''") + "'"


def _coalesce(columns: list[str]) -> str:
    return {0: "NULL", 1: "".join(columns)}.get(len(columns), f"coalesce({', '.join(columns)})")


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _stage_sql(source: str, emails: list[str], accounts: list[str], received: datetime) -> str:
    """One streaming pass: every non-blank line → its reason (NULL if good) and canonical row."""
    # Popped properties are gone before the old path looks for emails and accounts.
    emails = [k for k in dict.fromkeys(emails) if k not in _POPPED]
    accounts = [k for k in dict.fromkeys(accounts) if k not in _POPPED]
    paths = [
        _pointer("event"),
        _pointer("properties"),
        *(_pointer("properties", k) for k in (*_POPPED, "mp_processing_time_ms", "$device_id")),
        *(_pointer("properties", k) for k in emails + accounts),
    ]
    email_f = [f"e{i}" for i in range(len(emails))]
    account_f = [f"a{i}" for i in range(len(accounts))]
    named = email_f + account_f

    def each(template: str) -> str:
        return "".join(", " + template.format(f=f) for f in named)

    picked = "".join(f", first_item(j[{8 + i}]) AS {f}" for i, f in enumerate(named))
    patch = json.dumps(dict.fromkeys(_POPPED)).replace("'", "''")
    fallback_us = int(received.timestamp()) * 1_000_000 + received.microsecond
    marker = mixpanel_lines.TRUNCATED_MARKER.replace("'", "''")
    return f"""
  WITH parsed AS (
    SELECT n, line, cut, CAST(try(json_extract(line, [{", ".join(paths)}])) AS VARCHAR[]) AS j
    FROM lines
  ), fields AS (
    SELECT n, line, cut, j IS NULL AS invalid, j[1] AS ev, j[2] AS props, j[3] AS t,
           j[4] AS uid, j[5] AS ins, j[6] AS proc, j[7] AS dev {picked}
    FROM parsed
  ), kinds AS (
    SELECT *, kind(ev) AS ev_k, kind(props) AS props_k, kind(t) AS t_k, kind(uid) AS uid_k,
           kind(ins) AS ins_k, kind(proc) AS proc_k, kind(dev) AS dev_k {each("kind({f}) AS {f}_k")}
    FROM fields
  ), valued AS (
    SELECT n, line, cut, invalid, props, props_k, t_k, t, uid, ins,
           CASE WHEN ev_k = 's' THEN NULLIF(str(ev), '') END AS event_name,
           CASE WHEN uid_k = 's' THEN NULLIF(str(uid), '')
                WHEN uid_k = '#' AND is_int(uid) THEN uid END AS user_key,
           CASE WHEN t_k = '#' THEN TRY_CAST(t AS DOUBLE) END AS t_num,
           CASE WHEN proc_k = '#' THEN TRY_CAST(proc AS DOUBLE) / 1000 END AS proc_s,
           CASE WHEN ins_k = 's' THEN NULLIF(str(ins), '')
                WHEN ins_k = '#' AND is_int(ins) AND ins <> '0' THEN ins END AS insert_id,
           -- Python truthiness: false, 0.0, [] and {{}} mean "no insert id", like null and "".
           CASE ins_k WHEN 'b' THEN ins = 'true' WHEN 'a' THEN ins <> '[]'
                WHEN 'o' THEN ins <> '{{}}'
                WHEN '#' THEN NOT is_int(ins) AND coalesce(TRY_CAST(ins AS DOUBLE) <> 0, true)
                ELSE false END AS bad_insert_id,
           CASE WHEN dev_k = 's' THEN NULLIF(str(dev), '')
                WHEN dev_k = '#' AND is_int(dev) THEN dev END AS device_id
           {each("text_of({f}, {f}_k) AS {f}")}
    FROM kinds
  ), timed AS (
    SELECT * EXCLUDE (t_num, proc_s {each("{f}")}),
           -- Values over 1e10 are milliseconds (time_in_ms exports), as in the old path.
           CASE WHEN t_num > 10000000000 THEN t_num / 1000 ELSE t_num END AS t_s,
           CASE WHEN plausible(proc_s) THEN seconds_to_us(proc_s) END AS proc_us
           {each("NULLIF(py_strip({f}), '') AS {f}")}
    FROM valued
  ), classified AS (
    SELECT * EXCLUDE (t_s {each("{f}")}), coalesce(plausible(t_s), false) AS t_plausible,
           CASE WHEN plausible(t_s) THEN seconds_to_us(t_s) END AS ts_us,
           {_coalesce(email_f)} AS email, {_coalesce(account_f)} AS account_key
    FROM timed
  ), judged AS (
    SELECT *, CASE
        WHEN cut IS NOT NULL THEN '{LINE_TOO_LARGE}'
        WHEN line = '{marker}' THEN '\x00terminated'
        WHEN invalid THEN CASE WHEN regexp_full_match(line, '[{_PY_SPACE}]*') THEN '\x00blank'
                               ELSE 'not valid JSON' END
        WHEN props_k IS DISTINCT FROM 'o' THEN 'no ''properties'' object'
        WHEN event_name IS NULL THEN 'missing event name'
        WHEN t_k IS DISTINCT FROM '#' THEN 'missing or non-numeric ''time'''
        WHEN user_key IS NULL THEN 'missing distinct_id'
        WHEN NOT t_plausible THEN 'time out of range'
        WHEN bad_insert_id THEN '{BAD_INSERT_ID.replace("'", "''")}'
        END AS reason
    FROM classified
  ), canonical AS (
    SELECT n, reason,
           CASE WHEN reason IS NOT NULL THEN line END AS raw,
           '{source.replace("'", "''")}' AS source,
           CASE WHEN reason IS NULL THEN coalesce(insert_id, mp_content_id(line)) END AS event_id,
           event_name, user_key, device_id,
           lower(replace(email, 'İ', 'i̇')) AS email,  -- the one letter DuckDB lowers otherwise
           account_key,
           CAST(make_timestamp(ts_us) AS TIMESTAMPTZ) AS ts,
           CAST(make_timestamp(coalesce(proc_us, {fallback_us})) AS TIMESTAMPTZ) AS received_at,
           CASE WHEN reason IS NULL THEN CAST(json_merge_patch(props, '{patch}') AS VARCHAR) END
               AS properties
    FROM judged
  )
  SELECT *, CASE WHEN reason IS NULL THEN hash({_KEY}) END AS h
  FROM canonical
  WHERE reason IS DISTINCT FROM '\x00blank'
"""


_COLUMNS = ", ".join(SCHEMA.names)
_KEY = "event_name, user_key, ts, event_id"
_HASHES_PER_PASS = 2_000_000  # about 100 MB of hash table per pass


def _dedupe(
    con: duckdb.DuckDBPyConnection, staged: str, good: int, out: Path, clock: _Clock
) -> int:
    """Write one row per dedup key (latest received, then latest line); returns rows written."""
    # Only keys whose hash repeats can hold duplicates. Their hashes are found a slice of the
    # hash space at a time, so that memory does not grow with the export; then only their rows
    # are ranked.
    slices = -(-good // _HASHES_PER_PASS)
    con.execute("CREATE TEMP TABLE repeated (h UBIGINT)")
    for k in range(slices):
        con.execute(f"""
            INSERT INTO repeated SELECT h FROM {staged}
            WHERE reason IS NULL AND h % {slices} = {k} GROUP BY h HAVING count(*) > 1
        """)
    clock.lap("dedup: repeated key hashes")
    con.execute(f"""
        CREATE TEMP TABLE losers AS
        SELECT n FROM {staged} SEMI JOIN repeated USING (h)
        WHERE reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY {_KEY} ORDER BY received_at DESC, n DESC) > 1
    """)
    clock.lap("dedup: rank repeated keys")
    con.execute(f"""
        COPY (SELECT {_COLUMNS} FROM {staged} ANTI JOIN losers USING (n) WHERE reason IS NULL)
        TO '{_sql_path(out)}' (FORMAT parquet, {_ZSTD})
    """)
    written = con.execute(f"SELECT count(*) FROM read_parquet('{_sql_path(out)}')").fetchone()[0]
    con.execute("DROP TABLE losers; DROP TABLE repeated")
    clock.lap("dedup: write part-0.parquet")
    return written


def _write_quarantine(con: duckdb.DuckDBPyConnection, staged: str, out: Path) -> None:
    """The quarantined lines in line order, one {"line", "reason", "raw"} object per line."""
    con.execute(
        f"""COPY (SELECT n AS line, reason, raw FROM {staged} WHERE reason IS NOT NULL
                  ORDER BY line)
            TO '{_sql_path(out)}' (FORMAT json, COMPRESSION gzip)"""
    )
