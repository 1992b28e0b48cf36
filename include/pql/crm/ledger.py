"""What the sync last wrote to a CRM, and what to write next: the CRM-neutral half of a sync.

Values travel as strings (as HubSpot takes them: "70", "true", "2026-10-01T00:00:00.000Z",
"" for empty); each CRM client converts them to its own types. A ledger per CRM and level
(contacts, companies/accounts) holds, per key, each field's value last written successfully
(one column per field, so 100,000 keys load and save in tens of milliseconds), a digest of
them, the record that holds them (`record`: "Contact/003…", "contacts/123"; "merged:contacts/…"
for a HubSpot contact merged into another person's record), the CRM's modification time of our
write (`modified_at`, where the CRM said it) and the record's parent (`parent`, a Contact's
Account). Beside it, the moment from which the next run looks for records edited by hand,
converted or merged, and the spans in which our own last writes lie (searched around).

A person's values belong to a record, not to an email: when the record an email resolves to
changes (a Lead converted to a Contact, a Contact created for the email, two contacts merged),
the full current values are written to the new record in that run, whatever the score did.

Long because it is every CRM-neutral rule of the sync (plan, hand edits, moves, verification,
the ledger's format and its upgrade), kept apart from the adapters that call the CRM.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pql.crm import SyncError  # noqa: F401 (the sync's error, raised by the adapters)
from pql.crm.targets import HubSpotTarget, SalesforceTarget
from pql.frames import among
from pql.lake import Lake, atomic_dir

# Look a little further back than the last run started: the CRM stamps modification times
# with its own clock, and HubSpot's search index lags writes by "a few moments".
CLOCK_SKEW = timedelta(minutes=5)
# The ledger's columns besides the key and the fields.
META = ("digest", "synced_at", "record", "modified_at", "parent", "flagged_at")
MODIFIED = "modified_at"  # a read's key for the record's modification time (CRM clock)
MERGED = "merged:"  # record prefix of an email whose contact was merged into another's record
# A run writing fewer records is simply read again by the next search (part of one page), which
# then also sees an edit made while it wrote; a larger one's span is searched around.
EXCLUDE_FROM = 100
OURS_KEPT = 2  # spans of our writes remembered at most (an older one's records are read again)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Since:
    """From when a run looks for what changed in the CRM (`start`), and the spans of the CRM's
    clock in which all of our own recent writes lie (`ours`): searched around, so a run after
    one that wrote 10,000 records does not read them all again. An edit made within such a span
    (while we wrote) is not seen by the search; one made before or after it is."""

    start: datetime
    ours: tuple[tuple[datetime, datetime], ...] = ()

    def gaps(self) -> list[tuple[datetime, datetime | None]]:
        """The spans to search, bounds included (None: up to now): from `start` on, less ours."""
        out, at = [], self.start
        for lo, hi in sorted(self.ours):
            if hi < at:
                continue
            if lo > at:
                out.append((at, lo))
            at = max(at, hi)
        return [*out, (at, None)]


def desired_values(scores: pd.DataFrame, target: HubSpotTarget | SalesforceTarget) -> pd.DataFrame:
    """CRM field values (strings) per email, from a scores snapshot."""
    email = normal_emails(scores["email"])
    s = scores.assign(email=email)[email.notna()].drop_duplicates("email", keep="last")
    qualified = pd.to_datetime(s["qualified_at"], utc=True)
    values = [
        s["score"].astype(int).astype(str),
        s["flag"].map({True: "true", False: "false"}),
        _iso_seconds(qualified),
        s["reasons"].fillna(""),
        s["model_version"],
    ]
    columns = dict(zip(contact_fields(target), values, strict=True))
    return pd.DataFrame({"email": s["email"].astype(str), **columns}).reset_index(drop=True)


def contact_fields(target: HubSpotTarget | SalesforceTarget) -> list[str]:
    """The CRM fields a contact (lead) sync writes, in desired_values' column order."""
    f = target.fields
    return [f.score, f.flag, f.qualified_at, f.reasons, f.model_version]


def normal_emails(emails: pd.Series) -> pd.Series:
    """Emails as the CRMs match them: trimmed, lower case; blank ones missing (<NA>). Two
    users whose emails differ only so are one CRM record (written once, the last one's)."""
    text = emails.astype("string").str.strip().str.lower()
    return text.where(text != "")


def no_email(scores: pd.DataFrame) -> int:
    """Users that cannot be synced for want of an email (missing or blank)."""
    return int(normal_emails(scores["email"]).isna().sum())


def _iso_seconds(moments: pd.Series) -> pd.Series:
    """UTC instants as '2026-10-01T00:00:00.000Z' (whole seconds, as HubSpot shows them; ''
    for none). Formatted once per distinct instant: a snapshot holds few (days, not users)."""
    codes, uniques = pd.factorize(moments.dt.tz_convert(None).dt.floor("s"))
    text = np.datetime_as_string(uniques.to_numpy("datetime64[s]"), unit="s")
    table = np.append(np.char.add(text, ".000Z").astype(object), "")
    return pd.Series(table[codes], index=moments.index)  # code -1 (none) takes the last: ''


def desired_accounts(
    accounts: pd.DataFrame, target: HubSpotTarget | SalesforceTarget
) -> pd.DataFrame:
    """Account qualification values as strings per domain, from an accounts rollup."""
    f = target.fields
    a = accounts[accounts["account_key"].notna()].drop_duplicates("account_key", keep="last")
    return pd.DataFrame(
        {
            "domain": a["account_key"].str.lower(),
            f.account_qualified: a["qualified"].map({True: "true", False: "false"}),
            f.account_score: a["best_score"].astype(int).astype(str),
            f.account_reasons: a["reasons"].fillna(""),
        }
    ).reset_index(drop=True)


def digests(frame: pd.DataFrame, key: str) -> pd.Series:
    """A 64-bit digest (as text) of each row's field values (not the key, not META)."""
    fields = sorted(c for c in frame.columns if c != key and c not in META)
    return pd.util.hash_pandas_object(frame[fields].astype(str), index=False).astype(str)


def changed(desired: pd.DataFrame, ledger: pd.DataFrame | None, key: str = "email") -> pd.DataFrame:
    """Rows of `desired` whose values differ from what the ledger says was last written."""
    if ledger is None or ledger.empty:
        return desired
    was = desired[key].map(ledger.set_index(key)["digest"])
    return desired[digests(desired, key).ne(was)]


def plan(
    scores: pd.DataFrame, ledger: pd.DataFrame | None, target: HubSpotTarget | SalesforceTarget
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """What a sync run starts from: desired values, the changed rows, and counts."""
    desired = desired_values(scores, target)
    if not target.unflag:
        desired = keep_flags(desired, ledger, target.fields.flag)
    away = merged_away(ledger)
    if away:  # their record is another person's now: writing by email would re-create them
        desired = desired[~among(desired["email"], away)]
    todo = changed(desired, ledger)
    counts = {
        "candidates": len(desired),
        "unchanged": len(desired) - len(todo),
        "skipped_no_email": no_email(scores),
    }
    if away:
        counts["merged_away"] = len(away)
    return desired, todo, counts


def material(
    todo: pd.DataFrame,
    ledger: pd.DataFrame | None,
    target: HubSpotTarget | SalesforceTarget,
    min_score_change: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of `todo` that flip the flag or move the score by at least `min_score_change`
    against the ledger, and the rest (deferred to a full run). A person the ledger does not
    hold counts as flag false, score 0: a new PQL goes at once, a small new score waits."""
    f = target.fields
    was = ledger.set_index("email") if ledger is not None else pd.DataFrame()

    def before(column: str, default: str) -> pd.Series:
        held = todo["email"].map(was[column]) if column in was.columns else None
        return pd.Series(default, index=todo.index) if held is None else held.fillna(default)

    score = pd.to_numeric(todo[f.score], errors="coerce").fillna(0)
    old = pd.to_numeric(before(f.score, "0"), errors="coerce").fillna(0)
    small = todo[f.flag].eq(before(f.flag, "false")) & (score - old).abs().lt(min_score_change)
    return todo[~small], todo[small]


def records(ledger: pd.DataFrame | None, key: str = "email") -> dict[str, str]:
    """key → the record that holds its values ("Object/id"), where the ledger knows it."""
    if ledger is None or "record" not in ledger.columns:
        return {}
    known = ledger[ledger["record"].notna()]
    # As lists: iterating pandas' text columns costs a microsecond a value.
    return dict(zip(known[key].tolist(), known["record"].tolist(), strict=True))


def merged_away(ledger: pd.DataFrame | None, key: str = "email") -> set[str]:
    """Keys whose record was merged into another person's: never written again."""
    if ledger is None or "record" not in ledger.columns:
        return set()
    away = ledger["record"].astype("string").str.startswith(MERGED).fillna(False).astype(bool)
    return set(ledger.loc[away, key].tolist())


def column(ledger: pd.DataFrame | None, name: str, keys, key: str = "email") -> dict[str, str]:
    """key → the ledger's `name` (a META column) for those of `keys` that have one."""
    if ledger is None or name not in ledger.columns:
        return {}
    rows = ledger[among(ledger[key], keys) & ledger[name].notna()]
    return dict(zip(rows[key], rows[name], strict=True))


def relocated(
    todo: pd.DataFrame,
    desired: pd.DataFrame,
    ledger: pd.DataFrame | None,
    now: dict[str, str],
    key: str = "email",
) -> tuple[pd.DataFrame, set[str]]:
    """Add to `todo` the full desired values of keys whose record is not the one the ledger
    says holds their values (`now`: key → the record it resolves to today). Keys the ledger has
    no record for (ledgers from before records were kept) count as moved only when the CRM
    says their record changed since the last run, which is what `now` holds for them."""
    if not now or ledger is None:
        return todo, set()
    was = records(ledger, key)
    written = set(ledger[key])
    moved = {k for k, r in now.items() if k in written and was.get(k) != r}
    if not moved:
        return todo, moved
    back = desired[among(desired[key], moved) & ~among(desired[key], todo[key])]
    log.info("%s records now live elsewhere (converted, created or merged): their values are "
             "written there", len(moved))  # fmt: skip
    return pd.concat([todo, back]), moved


def keep_flags(desired: pd.DataFrame, ledger: pd.DataFrame | None, flag: str) -> pd.DataFrame:
    """With unflag off, a lead once written as qualified stays flagged in the CRM."""
    if ledger is None or ledger.empty:
        return desired
    if flag not in ledger.columns:
        return desired
    was = ledger.set_index("email")[flag].eq("true")
    keep = desired["email"].map(was).fillna(False).astype(bool)
    return desired.assign(**{flag: desired[flag].where(~keep, "true")})


def same_value(a, b) -> bool:
    """Equal as a CRM stores them: '70' and 70.0, True and 'true', or two spellings of one
    instant match."""
    a, b = (_text(v) for v in (a, b))
    if a == b:
        return True
    for parse in (float, lambda v: pd.Timestamp(v).tz_convert("UTC")):
        try:
            return parse(a) == parse(b)
        except (ValueError, TypeError):
            continue
    return False


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def differing(current: dict[str, dict], want: dict[str, dict]) -> dict[str, list[str]]:
    """key → the fields whose CRM value (`current`) is not the one in `want`, where any is."""
    out = {}
    for key, values in want.items():
        if key in current:
            diff = [k for k, v in values.items() if not same_value(current[key].get(k), v)]
            if diff:
                out[key] = diff
    return out


def edited_in_crm(
    current: dict[str, dict], ledger: pd.DataFrame | None, key: str = "email"
) -> set[str]:
    """Keys whose CRM values differ from what this pipeline last wrote (edited by hand)."""
    if ledger is None or not current:
        return set()
    # Only the fields read from the CRM: a field no longer mapped is nobody's edit.
    fields = set().union(*current.values())
    last = last_values(ledger, current.keys(), key)
    return set(differing(current, {k: {f: v for f, v in d.items() if f in fields}
                                   for k, d in last.items()}))  # fmt: skip


def last_values(ledger: pd.DataFrame | None, keys, key: str = "email") -> dict[str, dict]:
    """key → {field: value last written} for those of `keys` in the ledger (fields the
    mapping had then)."""
    if ledger is None:
        return {}
    mine = ledger[among(ledger[key], keys)]
    fields = [c for c in mine.columns if c not in (key, *META)]
    return {r[key]: {f: r[f] for f in fields if not pd.isna(r[f])} for r in mine.to_dict("records")}


def load_ledger(lake: Lake, name: str = "ledger", crm: str = "hubspot") -> pd.DataFrame | None:
    """What the sync last wrote to `crm` (key, one column per field, digest, synced_at), or
    None. Ledgers from before the columns (one JSON text per key) are read as well."""
    path = lake.sync(crm) / name / "ledger.parquet"
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    if "values" not in frame.columns:
        return frame
    key = frame.columns[0]
    values = pd.DataFrame([json.loads(v) for v in frame["values"]], index=frame.index)
    out = pd.concat([frame[[key]], values], axis=1)
    # Digests are over the fields the row was written with: a field missing from a row (the
    # mapping changed since) makes it differ, and the row is written again.
    digest = digests(out, key)
    if "digest" in frame.columns:
        digest = frame["digest"].fillna(digest)
    return out.assign(digest=digest, synced_at=frame["synced_at"])


def flag_times(lake: Lake, crm: str) -> pd.Series:
    """email → when the CRM first held the person's current flag 'true' (flagged_at); empty
    before any sync recorded it."""
    ledger = load_ledger(lake, crm=crm)
    if ledger is None or "flagged_at" not in ledger.columns:
        return pd.Series(dtype="datetime64[us, UTC]")
    held = ledger[ledger["flagged_at"].notna()]
    return pd.Series(pd.to_datetime(held["flagged_at"], utc=True).to_numpy(),
                     index=held["email"].to_numpy())  # fmt: skip


def edits_since(lake: Lake, name: str = "ledger", crm: str = "hubspot") -> datetime | None:
    """From when the next run looks for hand edits (the last run's start), or None if never."""
    since = watermark(lake, name, crm)
    return since.start if since else None


def watermark(lake: Lake, name: str = "ledger", crm: str = "hubspot") -> Since | None:
    """What the next run searches for changes made in the CRM (see Since), or None if never."""
    path = lake.sync(crm) / name / "state.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    start = datetime.fromisoformat(state["edits_since"]) - CLOCK_SKEW
    ours = [tuple(datetime.fromisoformat(t) for t in span) for span in state.get("ours", [])]
    return Since(start, tuple(s for s in ours if s[1] >= start))


def next_ours(
    since: Since | None, started: datetime, span: tuple[datetime, datetime] | None, written: int
) -> list[tuple[datetime, datetime]]:
    """The spans of our writes the next run searches around: the ones it still reaches back to,
    and this run's when it wrote EXCLUDE_FROM records or more (the latest OURS_KEPT)."""
    start = started - CLOCK_SKEW
    ours = [s for s in (since.ours if since else ()) if s[1] >= start]
    if span is not None and written >= EXCLUDE_FROM:
        ours.append(span)
    return sorted(ours)[-OURS_KEPT:]


def update_ledger(
    lake: Lake,
    ledger: pd.DataFrame | None,
    written: pd.DataFrame,
    *,
    key: str = "email",
    name: str = "ledger",
    crm: str = "hubspot",
    run_started: datetime | None = None,
    where: dict[str, str] | None = None,
    columns: dict[str, dict[str, str]] | None = None,
    ours: list[tuple[datetime, datetime]] | None = None,
) -> None:
    """Record `written` rows (key and field values) as the CRM's values, held by the records
    in `where`; with `run_started`, the next check for edits, conversions and merges starts
    there (everything the CRM changed since, around the spans `ours` of our writes)."""
    save_ledger(lake, merged_ledger(ledger, written, key, where, columns), name=name, crm=crm,
                run_started=run_started, ours=ours)  # fmt: skip


def merged_ledger(
    ledger: pd.DataFrame | None,
    written: pd.DataFrame,
    key: str = "email",
    where: dict[str, str] | None = None,
    columns: dict[str, dict[str, str]] | None = None,
    flag: str | None = None,
    qualified: str | None = None,
) -> pd.DataFrame:
    """The ledger with `written` rows (key and field values) as the CRM's values; `where`
    gives the record (key → "Object/id") each was written to, or a merged-away marker;
    `columns` other META columns of the written rows (name → key → value); `flag` and
    `qualified` the flag and qualified-at fields, for `flagged_at` (flagged_at)."""
    fresh = written.assign(digest=digests(written, key), synced_at=datetime.now(UTC))
    if where:
        fresh = fresh.assign(record=fresh[key].map(where))
    for name, values in (columns or {}).items():
        fresh[name] = fresh[key].map(values).astype(object)
    if flag and flag in fresh.columns:
        fresh["flagged_at"] = flagged_at(ledger, fresh, key, flag, qualified)
    merged = pd.concat([ledger, fresh]) if ledger is not None else fresh
    merged = merged.drop_duplicates(key, keep="last")  # this run's entry wins
    if where and ledger is not None:  # records of keys not written this run (merged away)
        done = set(written[key])
        rest = {k: r for k, r in where.items() if k not in done}
        if rest:
            hit = among(merged[key], rest)
            merged.loc[hit, "record"] = merged.loc[hit, key].map(rest)
    return merged


def flagged_at(
    ledger: pd.DataFrame | None,
    fresh: pd.DataFrame,
    key: str,
    flag: str,
    qualified: str | None = None,
) -> pd.Series:
    """When the CRM first held each written person's current qualification flagged: kept
    from the ledger while the qualification (the `qualified` field's value) is the same one,
    even through an un-flag; this write's time (the CRM's modification time when known) when
    it flags a qualification for the first time; none for who never was. How long new PQLs
    wait for their flag is counted from it (the weekly report)."""
    now = pd.to_datetime(fresh["synced_at"], utc=True).astype("datetime64[us, UTC]")
    if "modified_at" in fresh.columns:
        crm_time = pd.to_datetime(fresh["modified_at"], utc=True, errors="coerce", format="mixed")
        now = crm_time.astype("datetime64[us, UTC]").fillna(now)
    was = pd.Series(pd.NaT, index=fresh.index, dtype="datetime64[us, UTC]")
    if ledger is not None and "flagged_at" in ledger.columns and flag in ledger.columns:
        old = ledger.drop_duplicates(key, keep="last").set_index(key)
        kept = old["flagged_at"].notna()
        if qualified and qualified in old.columns and qualified in fresh.columns:
            same = fresh[key].map(old[qualified].to_dict()) == fresh[qualified]
        else:  # without the qualification's moment: the flag must have stayed on
            kept &= old[flag] == "true"
            same = pd.Series(True, index=fresh.index)
        held = old.loc[kept, "flagged_at"]
        if len(held):  # (pandas cannot map through an empty series of times)
            was = pd.to_datetime(fresh[key].map(held.to_dict()), utc=True, format="mixed")
            was = was.astype("datetime64[us, UTC]").where(same)
    on = fresh[flag] == "true"
    out = was.where(was.notna(), now.where(on))
    # Text, as the CRM's own times in the ledger (a ledger is read back whatever its age).
    text = [t.isoformat() if pd.notna(t) else None for t in out]
    return pd.Series(text, index=fresh.index, dtype=object)


def save_ledger(
    lake: Lake,
    merged: pd.DataFrame,
    *,
    name: str = "ledger",
    crm: str = "hubspot",
    run_started: datetime | None = None,
    ours: list[tuple[datetime, datetime]] | None = None,
) -> None:
    """Put a merged ledger in place in one step (see update_ledger); `ours`: the spans of our
    writes the next run searches around (next_ours)."""
    state = lake.sync(crm) / name / "state.json"
    previous = state.read_text() if state.exists() else None
    with atomic_dir(lake.sync(crm) / name) as tmp:
        merged.to_parquet(tmp / "ledger.parquet", index=False)
        if run_started is not None:
            saved = {"edits_since": run_started.isoformat()}
            if ours:
                saved["ours"] = [[lo.isoformat(), hi.isoformat()] for lo, hi in ours]
            (tmp / "state.json").write_text(json.dumps(saved))
        elif previous is not None:
            (tmp / "state.json").write_text(previous)


def diff_sample(todo: pd.DataFrame, ledger: pd.DataFrame | None, n: int = 10) -> list[dict]:
    """Up to n records that would be written, each with its changed fields' old and new values."""
    last = last_values(ledger, todo["email"].head(n))
    fields = [c for c in todo.columns if c != "email"]
    out = []
    for r in todo.head(n).to_dict("records"):
        old = last.get(r["email"], {})
        changes = {k: (old.get(k), r[k]) for k in fields if old.get(k) != r[k]}
        out.append({"email": r["email"], "new_record": not old, "changes": changes})
    return out


def apply_manual_edits(
    todo: pd.DataFrame,
    desired: pd.DataFrame,
    ledger: pd.DataFrame | None,
    current: dict[str, dict],
    rule: str,
) -> tuple[pd.DataFrame, dict]:
    """Records whose CRM values (`current`) differ from the ledger were edited by hand:
    `keep` leaves them out of this run's writes, `overwrite` writes the computed values back
    (even where the computed values did not change)."""
    edited = edited_in_crm(current, ledger)
    if not edited:
        return todo, {"edited_in_crm": 0}
    if rule == "keep":
        kept = among(todo["email"], edited)
        log.warning("%s records were edited in the CRM by hand: kept", len(edited))
        return todo[~kept], {"edited_in_crm": len(edited), "kept_manual_edits": int(kept.sum())}
    back = desired[among(desired["email"], edited) & ~among(desired["email"], todo["email"])]
    log.warning("%s records were edited in the CRM by hand: computed values written back",
                len(edited))  # fmt: skip
    return pd.concat([todo, back]), {"edited_in_crm": len(edited), "overwritten": len(edited)}


def to_verify(written: pd.Series, mode: str, sample: int) -> list[str]:
    """The written keys to read back: all, a fixed-seed sample, or none."""
    if mode == "off" or written.empty:
        return []
    if mode == "all":
        return list(written)
    return list(written.sample(n=min(sample, len(written)), random_state=0))


def verify_rest(results: pd.DataFrame, checked: list[str], mode: str) -> list[str]:
    """The written keys still to read back after a sample: none, unless the sample found a
    record the CRM does not hold as sent; then all of them (a write the CRM loses is a whole
    batch of 100-200 records, of which a sample sees only some)."""
    if mode != "sample" or not checked:
        return []
    sampled = among(results["email"], checked)
    if not (sampled & results["status"].eq("failed")).any():
        return []
    log.warning("read-back: the sample found lost writes; reading back every written record")
    return list(results.loc[results["status"].eq("written") & ~sampled, "email"])


def unverified(
    results: pd.DataFrame, sent: pd.DataFrame, held: dict[str, dict], checked: list[str]
) -> pd.DataFrame:
    """Mark written records the CRM does not hold as sent as failed (transient): they stay
    out of the ledger and are sent again next run."""
    want = sent.set_index("email")
    fields = list(want.columns)
    bad = {
        e: "read back differs on " + ", ".join(diff)
        for e, diff in differing(
            {e: held.get(e, {}) for e in checked},
            {e: dict(zip(fields, want.loc[e], strict=True)) for e in checked},
        ).items()
    }
    if bad:
        log.warning("read-back: %s of %s checked records differ; they stay unsynced", len(bad),
                    len(checked))  # fmt: skip
        hit = among(results["email"], bad)
        results.loc[hit, "status"] = "failed"
        results.loc[hit, "message"] = results.loc[hit, "email"].map(bad)
        results.loc[hit, "transient"] = True
    return results
