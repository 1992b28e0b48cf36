"""What the sync last wrote to a CRM, and what to write next: the CRM-neutral half of a sync.

Values travel as strings (as HubSpot takes them: "70", "true", "2026-10-01T00:00:00.000Z",
"" for empty); each CRM client converts them to its own types. A ledger per CRM and level
(contacts, companies/accounts) holds, per key, the sorted-key JSON of the values last written
successfully, and the moment from which the next run looks for records edited by hand.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pql.config import HubSpotTarget, SalesforceTarget
from pql.lake import Lake, atomic_dir

# Look a little further back than the last run started: the CRM stamps modification times
# with its own clock, and HubSpot's search index lags writes by "a few moments".
CLOCK_SKEW = timedelta(minutes=5)

log = logging.getLogger(__name__)


class SyncError(Exception):
    """Too many records were rejected, or the CRM could not be reached."""


def desired_values(scores: pd.DataFrame, target: HubSpotTarget | SalesforceTarget) -> pd.DataFrame:
    """CRM field values (strings) per email, from a scores snapshot."""
    f = target.fields
    email = normal_emails(scores["email"])
    s = scores.assign(email=email)[email.notna()].drop_duplicates("email", keep="last")
    qualified = pd.to_datetime(s["qualified_at"], utc=True)
    return pd.DataFrame(
        {
            "email": s["email"].astype(str),
            f.score: s["score"].astype(int).astype(str),
            f.flag: s["flag"].map({True: "true", False: "false"}),
            f.qualified_at: _iso_seconds(qualified),
            f.reasons: s["reasons"].fillna(""),
            f.model_version: s["model_version"],
        }
    ).reset_index(drop=True)


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
    for none); vectorised, as strftime is not."""
    text = np.datetime_as_string(moments.dt.tz_convert(None).to_numpy("datetime64[s]"), unit="s")
    return pd.Series(np.char.add(text, ".000Z"), index=moments.index).where(moments.notna(), "")


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


def values_json(frame: pd.DataFrame, key: str) -> list[str]:
    """Each row's values except the key, as the ledger stores them (sorted-key JSON)."""
    fields = sorted(c for c in frame.columns if c != key)
    return [
        json.dumps(dict(zip(fields, row, strict=True)))
        for row in frame[fields].itertuples(index=False, name=None)
    ]


def digests(frame: pd.DataFrame, key: str) -> pd.Series:
    """A 64-bit digest (as text) of each row's values except the key: the fast diff."""
    fields = sorted(c for c in frame.columns if c != key)
    return pd.util.hash_pandas_object(frame[fields].astype(str), index=False).astype(str)


def changed(desired: pd.DataFrame, ledger: pd.DataFrame | None, key: str = "email") -> pd.DataFrame:
    """Rows of `desired` whose values differ from what the ledger says was last written."""
    if ledger is None or ledger.empty:
        return desired
    last = ledger.set_index(key)
    digest = last["digest"] if "digest" in last.columns else pd.Series(pd.NA, index=last.index)
    was = desired[key].map(digest)
    differs = digests(desired, key).ne(was)
    # Rows written before the ledger kept digests: compare their JSON instead.
    old = was.isna()
    if old.any() and (old := old & desired[key].isin(last.index)).any():
        rows = desired[old]
        now = pd.Series(values_json(rows, key), index=rows.index)
        differs[old] = now.ne(rows[key].map(last["values"]))
    return desired[differs]


def plan(
    scores: pd.DataFrame, lake: Lake, target: HubSpotTarget | SalesforceTarget, crm: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame, dict]:
    """What a sync run starts from: desired values, the ledger, the changed rows, and counts."""
    desired = desired_values(scores, target)
    ledger = load_ledger(lake, crm=crm)
    if not target.unflag:
        desired = keep_flags(desired, ledger, target.fields.flag)
    todo = changed(desired, ledger)
    counts = {
        "candidates": len(desired),
        "unchanged": len(desired) - len(todo),
        "skipped_no_email": no_email(scores),
    }
    return desired, ledger, todo, counts


def keep_flags(desired: pd.DataFrame, ledger: pd.DataFrame | None, flag: str) -> pd.DataFrame:
    """With unflag off, a lead once written as qualified stays flagged in the CRM."""
    if ledger is None or ledger.empty:
        return desired
    was = ledger.set_index("email")["values"].map(lambda v: json.loads(v).get(flag) == "true")
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
    mine = ledger[ledger[key].isin(current.keys())]
    last = {k: json.loads(v) for k, v in zip(mine[key], mine["values"], strict=True)}
    return set(differing(current, last))


def load_ledger(lake: Lake, name: str = "ledger", crm: str = "hubspot") -> pd.DataFrame | None:
    """What the sync last wrote to `crm` (key, sorted-key JSON values, synced_at), or None."""
    path = lake.sync(crm) / name / "ledger.parquet"
    return pd.read_parquet(path) if path.exists() else None


def edits_since(lake: Lake, name: str = "ledger", crm: str = "hubspot") -> datetime | None:
    """From when the next run looks for hand edits (the last run's start), or None if never."""
    path = lake.sync(crm) / name / "state.json"
    if not path.exists():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["edits_since"]) - CLOCK_SKEW


def entries(rows: pd.DataFrame, key: str = "email") -> pd.DataFrame:
    """Ledger entries (key, values JSON, digest) for rows about to be written: computed while
    the rate window would idle anyway, so the run ends soon after its last call."""
    return pd.DataFrame(
        {key: rows[key], "values": values_json(rows, key), "digest": digests(rows, key)}
    )


def update_ledger(
    lake: Lake,
    ledger: pd.DataFrame | None,
    written: pd.DataFrame,
    *,
    key: str = "email",
    name: str = "ledger",
    crm: str = "hubspot",
    run_started: datetime | None = None,
    prepared: pd.DataFrame | None = None,
) -> None:
    """Record `written` rows as the CRM's values (from `prepared` entries when given); with
    `run_started`, the next edit check starts there (everything the CRM changed since)."""
    if prepared is None:
        fresh = entries(written, key)
    else:
        fresh = prepared[prepared[key].isin(written[key])]
    fresh = fresh.assign(synced_at=datetime.now(UTC))
    merged = fresh if ledger is None else pd.concat([ledger[~ledger[key].isin(fresh[key])], fresh])
    state = lake.sync(crm) / name / "state.json"
    previous = state.read_text() if state.exists() else None
    with atomic_dir(lake.sync(crm) / name) as tmp:
        merged.to_parquet(tmp / "ledger.parquet", index=False)
        if run_started is not None:
            (tmp / "state.json").write_text(json.dumps({"edits_since": run_started.isoformat()}))
        elif previous is not None:
            (tmp / "state.json").write_text(previous)


def diff_sample(todo: pd.DataFrame, ledger: pd.DataFrame | None, n: int = 10) -> list[dict]:
    """Up to n records that would be written, each with its changed fields' old and new values."""
    last = {} if ledger is None else dict(zip(ledger["email"], ledger["values"], strict=True))
    fields = [c for c in todo.columns if c != "email"]
    out = []
    for r in todo.head(n).to_dict("records"):
        old = json.loads(last[r["email"]]) if r["email"] in last else {}
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
        kept = todo["email"].isin(edited)
        log.warning("%s records were edited in the CRM by hand: kept", len(edited))
        return todo[~kept], {"edited_in_crm": len(edited), "kept_manual_edits": int(kept.sum())}
    back = desired[desired["email"].isin(edited) & ~desired["email"].isin(todo["email"])]
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
    sampled = results["email"].isin(checked)
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
        hit = results["email"].isin(bad.keys())
        results.loc[hit, "status"] = "failed"
        results.loc[hit, "message"] = results.loc[hit, "email"].map(bad)
        results.loc[hit, "transient"] = True
    return results
