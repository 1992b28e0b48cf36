"""HubSpot through hubspot-api-client: provisioning, diff-based contact upserts, reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pandas as pd
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    SimplePublicObjectBatchInputUpsert,
)
from hubspot.crm.properties import PropertyCreate, PropertyGroupCreate
from urllib3.util.retry import Retry

from pql.config import HubSpotTarget, SalesforceTarget
from pql.lake import Lake, atomic_dir
from pql.ratelimit import Budget

log = logging.getLogger(__name__)

BATCH = 100  # HubSpot's maximum inputs per batch call
# HubSpot counts a call when it arrives, this budget when it is sent: a quarter second of margin
# keeps the two windows from overlapping into a 429 at the edge (a 429 costs far more).
WINDOW_S = 10.25
WORKERS = 4  # batch calls in flight at once (HubSpot limits the rate, not concurrency)
API_HOST = "https://api.hubapi.com"


class SyncError(Exception):
    """Too many records were rejected, or the CRM could not be reached."""


class _CappedRetry(Retry):
    """urllib3 Retry that never sleeps longer than a minute on a Retry-After header.

    A DAILY-limit 429 can ask to wait until midnight: better to fail the task with HubSpot's
    message than to hold a worker slot for hours.
    """

    def get_retry_after(self, response):
        after = super().get_retry_after(response)
        return None if after is None else min(after, 60.0)


def client(access_token: str, host: str | None = None, requests_per_10s: int = 100) -> HubSpot:
    """A HubSpot client that retries 429 and 5xx with backoff (POSTs included).

    Every call this module (and outcomes) makes first waits for the client's budget: at most
    `requests_per_10s` in any rolling 10 seconds (100 for most private apps, 190 on
    Professional/Enterprise) and 5 searches a second, so 429s are the exception, not the pacing.
    """
    retry = _CappedRetry(
        total=8,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    hs = HubSpot(access_token=access_token, host=(host or API_HOST).rstrip("/"), retry=retry)
    hs._pql_budgets = {  # read by limited(); an attribute so every holder of hs shares it
        "api": Budget([(requests_per_10s, WINDOW_S)]),
        "search": Budget([(5, 1.0)]),
    }
    return hs


def set_rate(hs: HubSpot, requests_per_10s: int) -> HubSpot:
    """Set the client's rolling 10-second budget (the app's tier: 100, 190 or 250)."""
    hs._pql_budgets["api"] = Budget([(requests_per_10s, WINDOW_S)])
    return hs


def limited(hs: HubSpot, kind: str = "api") -> None:
    """Wait until one more call of `kind` (api, search) fits HubSpot's rolling limits."""
    budgets = getattr(hs, "_pql_budgets", None)
    if budgets:
        budgets[kind].acquire()


def property_specs(target: HubSpotTarget) -> list[dict]:
    """The custom contact properties the sync writes, with HubSpot's type/fieldType pairs."""
    f = target.fields
    return [
        {"name": f.score, "label": "PQL score", "type": "number", "field_type": "number"},
        {
            "name": f.flag,
            "label": "PQL",
            "type": "bool",
            "field_type": "booleancheckbox",
            "options": [
                {"label": "Yes", "value": "true", "displayOrder": 0},
                {"label": "No", "value": "false", "displayOrder": 1},
            ],
        },
        {
            "name": f.qualified_at,
            "label": "PQL qualified at",
            "type": "datetime",
            "field_type": "date",
        },
        {"name": f.reasons, "label": "PQL reasons", "type": "string", "field_type": "textarea"},
        {
            "name": f.model_version,
            "label": "PQL model version",
            "type": "string",
            "field_type": "text",
        },
    ]


def ensure_properties(
    hs: HubSpot, target: HubSpotTarget, object_type: str = "contacts", specs: list | None = None
) -> list[str]:
    """Create the property group and any missing custom properties; returns what was created."""
    created = []
    limited(hs)
    groups = {g.name for g in hs.crm.properties.groups_api.get_all(object_type=object_type).results}
    if target.property_group not in groups:
        limited(hs)
        hs.crm.properties.groups_api.create(
            object_type=object_type,
            property_group_create=PropertyGroupCreate(
                name=target.property_group, label="Product-qualified lead", display_order=-1
            ),
        )
        created.append(f"group {target.property_group}")
    limited(hs)
    existing = {p.name for p in hs.crm.properties.core_api.get_all(object_type=object_type).results}
    for spec in specs if specs is not None else property_specs(target):
        if spec["name"] in existing:
            continue
        limited(hs)
        hs.crm.properties.core_api.create(
            object_type=object_type,
            property_create=PropertyCreate(group_name=target.property_group, **spec),
        )
        created.append(spec["name"])
    if created:
        log.info("created in HubSpot %s: %s", object_type, ", ".join(created))
    return created


def desired_values(scores: pd.DataFrame, target: HubSpotTarget | SalesforceTarget) -> pd.DataFrame:
    """CRM field values (strings, as HubSpot takes them) per email, from a scores snapshot."""
    f = target.fields
    s = scores[scores["email"].notna()].drop_duplicates("email", keep="last")
    qualified = pd.to_datetime(s["qualified_at"], utc=True)
    return pd.DataFrame(
        {
            "email": s["email"].str.lower(),
            f.score: s["score"].astype(int).astype(str),
            f.flag: s["flag"].map({True: "true", False: "false"}),
            f.qualified_at: qualified.dt.strftime("%Y-%m-%dT%H:%M:%S.000Z").fillna(""),
            f.reasons: s["reasons"].fillna(""),
            f.model_version: s["model_version"],
        }
    ).reset_index(drop=True)


def changed(desired: pd.DataFrame, ledger: pd.DataFrame | None, key: str = "email") -> pd.DataFrame:
    """Rows of `desired` whose values differ from what the ledger says was last written."""
    if ledger is None or ledger.empty:
        return desired
    last = ledger.set_index(key)["values"]
    now = pd.Series(values_json(desired, key), index=desired.index)
    return desired[now.ne(desired[key].map(last))]


def values_json(frame: pd.DataFrame, key: str) -> list[str]:
    """Each row's values except the key, as the ledger stores them (sorted-key JSON)."""
    fields = sorted(c for c in frame.columns if c != key)
    return [
        json.dumps(dict(zip(fields, row, strict=True)))
        for row in frame[fields].itertuples(index=False, name=None)
    ]


def in_parallel(fn, chunks: list, workers: int = WORKERS) -> Iterator:
    """fn(chunk) for every chunk, a few at a time, results in chunk order.

    A batch call takes 100-300 ms at HubSpot, so one at a time cannot use a 10-a-second budget;
    the shared budget (limited) still paces every call.
    """
    if len(chunks) <= 1:
        yield from map(fn, chunks)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        yield from pool.map(fn, chunks)


def upsert_contacts(hs: HubSpot, rows: pd.DataFrame) -> Iterator[dict]:
    """Upsert rows (email + properties) in batches of 100; yields one result per record."""
    fields = [c for c in rows.columns if c != "email"]
    records = rows.to_dict("records")
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    for results in in_parallel(lambda b: list(_upsert_batch(hs, b, fields)), batches):
        yield from results


def _upsert_batch(hs: HubSpot, batch: list[dict], fields: list[str]) -> Iterator[dict]:
    inputs = [
        SimplePublicObjectBatchInputUpsert(
            id_property="email", id=r["email"], properties={k: r[k] for k in fields}
        )
        for r in batch
    ]
    try:
        limited(hs)
        # Raw JSON: the SDK's model deserialisation (dateutil on every timestamp) costs more CPU
        # than the whole rest of a large sync.
        resp = hs.crm.contacts.batch_api.upsert(
            batch_input_simple_public_object_batch_input_upsert=(
                BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs)
            ),
            _preload_content=False,
        )
    except Exception as e:  # each hubspot package has its own ApiException class
        status = getattr(e, "status", None)
        if status == 400 and len(batch) > 1:
            # A batch with one invalid record is rejected whole: split it to isolate the record.
            mid = len(batch) // 2
            yield from _upsert_batch(hs, batch[:mid], fields)
            yield from _upsert_batch(hs, batch[mid:], fields)
            return
        if status is None:
            raise
        message = _error_message(getattr(e, "body", None)) or str(e)
        for r in batch:
            yield {
                "email": r["email"],
                "status": "failed",
                "http_status": status,
                "message": message,
                "transient": status == 429 or status >= 500,
            }
        return
    try:
        body = json.loads(resp.data)
    except (AttributeError, ValueError):
        raise SyncError("HubSpot answered the batch upsert with no JSON body") from None
    failed: dict[str, str] = {}
    for err in body.get("errors") or []:
        for rid in (err.get("context") or {}).get("ids", []):
            failed[rid.lower()] = err.get("message", "")
    done = {
        ((r.get("properties") or {}).get("email") or "").lower(): r["id"]
        for r in body.get("results") or []
    }
    for r in batch:
        email = r["email"]
        if email in failed or email not in done:
            yield {
                "email": email,
                "status": "failed",
                "http_status": 207,
                "message": failed.get(email, "not in HubSpot's answer"),
                "transient": False,
            }
        else:
            yield {
                "email": email,
                "status": "written",
                "http_status": 200,
                "message": "",
                "transient": False,
                "hubspot_id": done[email],
            }


def _error_message(body) -> str | None:
    try:
        return json.loads(body).get("message")
    except (TypeError, ValueError):
        return None


def read_contacts(hs: HubSpot, emails: list[str], fields: list[str]) -> dict[str, dict]:
    """Current values of `fields` for contacts by email (batch reads of 100; absent → missing)."""
    from hubspot.crm.contacts import BatchReadInputSimplePublicObjectId, SimplePublicObjectId

    def read(chunk: list[str]) -> list[dict]:
        body = BatchReadInputSimplePublicObjectId(
            id_property="email",
            properties=["email", *fields],
            inputs=[SimplePublicObjectId(id=e) for e in chunk],
        )
        limited(hs)
        resp = hs.crm.contacts.batch_api.read(
            batch_read_input_simple_public_object_id=body, _preload_content=False
        )
        return json.loads(resp.data).get("results") or []

    out: dict[str, dict] = {}
    chunks = [emails[i : i + BATCH] for i in range(0, len(emails), BATCH)]
    for results in in_parallel(read, chunks):
        for r in results:
            props = r.get("properties") or {}
            out[(props.get("email") or "").lower()] = {k: props.get(k) for k in fields}
    return out


def same_value(a, b) -> bool:
    """Equal as HubSpot stores them: '70' and '70.0', or two spellings of one instant, match."""
    a, b = ("" if a is None else str(a)), ("" if b is None else str(b))
    if a == b:
        return True
    for parse in (float, lambda v: pd.Timestamp(v).tz_convert("UTC")):
        try:
            return parse(a) == parse(b)
        except (ValueError, TypeError):
            continue
    return False


def edited_in_crm(current: dict[str, dict], ledger: pd.DataFrame | None) -> set[str]:
    """Emails whose CRM values differ from what this pipeline last wrote (edited by hand)."""
    if ledger is None or not current:
        return set()
    last = dict(zip(ledger["email"], ledger["values"], strict=True))
    edited = set()
    for email, values in current.items():
        if email in last:
            wrote = json.loads(last[email])
            if any(not same_value(values.get(k), v) for k, v in wrote.items()):
                edited.add(email)
    return edited


def load_ledger(lake: Lake, name: str = "ledger", crm: str = "hubspot") -> pd.DataFrame | None:
    """What the sync last wrote to `crm` (key, sorted-key JSON values, synced_at), or None."""
    path = lake.sync(crm) / name / "ledger.parquet"
    return pd.read_parquet(path) if path.exists() else None


def sync(
    hs: HubSpot, lake: Lake, target: HubSpotTarget, scores: pd.DataFrame, *, dry_run: bool = False
) -> dict:
    """Write changed scores to HubSpot contacts; record every result; update the ledger.

    Only records whose values differ from the ledger are sent, so an unchanged re-run makes
    no write calls. Failed records stay out of the ledger and are sent again next run.
    """
    desired = desired_values(scores, target)
    ledger = load_ledger(lake)
    if not target.unflag:
        desired = _keep_flags(desired, ledger, target.fields.flag)
    todo = changed(desired, ledger)
    counts = {
        "candidates": len(desired),
        "unchanged": len(desired) - len(todo),
        "skipped_no_email": int(scores["email"].isna().sum()),
    }
    if dry_run:
        return {**counts, "would_write": len(todo), "sample": diff_sample(todo, ledger)}
    ensure_properties(hs, target)
    fields = [c for c in desired.columns if c != "email"]
    if target.on_manual_edit == "keep":
        # Only "keep" needs to know what the CRM holds now: it costs one read per 100 records.
        known = todo["email"][todo["email"].isin(ledger["email"])] if ledger is not None else []
        edited = edited_in_crm(read_contacts(hs, list(known), fields), ledger)
        kept = todo[todo["email"].isin(edited)]
        todo = todo[~todo["email"].isin(kept["email"])]
        counts.update(edited_in_crm=len(edited), kept_manual_edits=len(kept))
        if edited:
            log.warning("%s records were edited in HubSpot since the last run: kept", len(edited))
    results = pd.DataFrame(
        list(upsert_contacts(hs, todo)),
        columns=["email", "status", "http_status", "message", "transient", "hubspot_id"],
    )
    results = _verify(hs, target, todo, results, fields)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    with atomic_dir(lake.sync("hubspot") / f"run={run_id}") as tmp:
        results.to_parquet(tmp / "results.parquet", index=False)
    written = results[results["status"] == "written"]
    _update_ledger(lake, ledger, todo[todo["email"].isin(written["email"])])
    failed = results[results["status"] == "failed"]
    counts.update(written=len(written), failed=len(failed), run=run_id)
    log.info(
        "HubSpot sync: %(written)s written, %(unchanged)s unchanged, %(failed)s failed", counts
    )
    # Measured against every record the run is responsible for, so one permanently bad
    # record retried on a quiet day does not fail the run on its own.
    if len(failed) and len(failed) / len(desired) > target.max_failed_share:
        sample = "; ".join(f"{r.email}: {r.message}" for r in failed.head(5).itertuples())
        raise SyncError(
            f"{len(failed)} of {len(desired)} records were rejected (more than "
            f"max_failed_share {target.max_failed_share:.0%}); e.g. {sample}. "
            f"All results: {lake.sync('hubspot') / f'run={run_id}'}"
        )
    return counts


def _keep_flags(desired: pd.DataFrame, ledger: pd.DataFrame | None, flag: str) -> pd.DataFrame:
    """With unflag off, a lead once written as qualified stays flagged in the CRM."""
    if ledger is None or ledger.empty:
        return desired
    was = ledger.set_index("email")["values"].map(lambda v: json.loads(v).get(flag) == "true")
    keep = desired["email"].map(was).fillna(False).astype(bool)
    return desired.assign(**{flag: desired[flag].where(~keep, "true")})


def _verify(hs: HubSpot, target: HubSpotTarget, sent: pd.DataFrame, results: pd.DataFrame,
            fields: list[str]) -> pd.DataFrame:  # fmt: skip
    """Read written records back; one the CRM does not hold as sent is failed, not synced."""
    written = results[results["status"] == "written"]["email"]
    if target.verify == "off" or written.empty:
        return results
    check = written if target.verify == "all" else written.sample(
        n=min(target.verify_sample, len(written)), random_state=0
    )  # fmt: skip
    held = read_contacts(hs, list(check), fields)
    want = sent.set_index("email")
    bad = {}
    for email in check:
        now = held.get(email, {})
        diff = [k for k in fields if not same_value(now.get(k), want.at[email, k])]
        if diff:
            bad[email] = f"read back differs on {', '.join(diff)}"
    if bad:
        log.warning("read-back: %s of %s checked records differ; they stay unsynced", len(bad),
                    len(check))  # fmt: skip
        hit = results["email"].isin(bad.keys())
        results.loc[hit, "status"] = "failed"
        results.loc[hit, "message"] = results.loc[hit, "email"].map(bad)
        results.loc[hit, "transient"] = True
    return results


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


def _update_ledger(lake: Lake, ledger: pd.DataFrame | None, written: pd.DataFrame,
                   key: str = "email", name: str = "ledger",
                   crm: str = "hubspot") -> None:  # fmt: skip
    now = datetime.now(UTC)
    fresh = pd.DataFrame({key: written[key], "values": values_json(written, key), "synced_at": now})
    merged = (
        fresh if ledger is None else pd.concat([ledger, fresh]).drop_duplicates(key, keep="last")
    )
    with atomic_dir(lake.sync(crm) / name) as tmp:
        merged.to_parquet(tmp / "ledger.parquet", index=False)


def read_companies(hs: HubSpot) -> pd.DataFrame:
    """All companies' firmographics (domain, employees, industry, country), paging through."""
    rows = []
    after = None
    while True:
        limited(hs)
        page = hs.crm.companies.basic_api.get_page(
            limit=100,
            after=after,
            properties=["domain", "numberofemployees", "industry", "country"],
        )
        for c in page.results:
            p = c.properties or {}
            rows.append(
                {
                    "hubspot_id": c.id,
                    "domain": p.get("domain"),
                    "employees": p.get("numberofemployees"),
                    "industry": p.get("industry"),
                    "country": p.get("country"),
                }
            )
        after = page.paging.next.after if page.paging and page.paging.next else None
        if not after:
            cols = ["hubspot_id", "domain", "employees", "industry", "country"]
            return pd.DataFrame(rows, columns=cols)


# --- companies: account qualification (PQA) -------------------------------------------------


def company_property_specs(target: HubSpotTarget) -> list[dict]:
    """The custom company properties the account sync writes."""
    f = target.fields
    return [
        {"name": f.account_qualified, "label": "PQA", "type": "bool",
         "field_type": "booleancheckbox",
         "options": [{"label": "Yes", "value": "true", "displayOrder": 0},
                     {"label": "No", "value": "false", "displayOrder": 1}]},
        {"name": f.account_score, "label": "PQA best user score", "type": "number",
         "field_type": "number"},
        {"name": f.account_reasons, "label": "PQA reasons", "type": "string",
         "field_type": "textarea"},
    ]  # fmt: skip


def desired_accounts(
    accounts: pd.DataFrame, target: HubSpotTarget | SalesforceTarget
) -> pd.DataFrame:
    """Account qualification values as strings per domain, from an accounts rollup (either CRM)."""
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


def sync_accounts(hs: HubSpot, lake: Lake, target: HubSpotTarget, accounts: pd.DataFrame) -> dict:
    """Write changed account qualification to the companies with that domain (never creates).

    Companies are found by domain and updated by record id in batches of 100; accounts without
    a company in HubSpot are counted, not created (company records belong to their owners).
    """
    from hubspot.crm.companies import BatchInputSimplePublicObjectBatchInput
    from hubspot.crm.companies import SimplePublicObjectBatchInput as CompanyInput

    desired = desired_accounts(accounts, target)
    ledger = load_ledger(lake, "companies_ledger")
    todo = changed(desired, ledger, key="domain")
    counts = {"accounts": len(desired), "unchanged": len(desired) - len(todo)}
    if todo.empty:
        return {**counts, "written": 0, "failed": 0, "not_in_crm": 0}
    ensure_properties(hs, target, "companies", company_property_specs(target))
    ids = read_companies(hs).dropna(subset=["domain"])
    by_domain = dict(zip(ids["domain"].str.lower(), ids["hubspot_id"], strict=True))
    todo = todo.assign(hubspot_id=todo["domain"].map(by_domain))
    missing = todo[todo["hubspot_id"].isna()]
    todo = todo[todo["hubspot_id"].notna()]
    fields = [c for c in desired.columns if c != "domain"]
    written, failed = [], []
    records = todo.to_dict("records")
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        body = BatchInputSimplePublicObjectBatchInput(
            inputs=[CompanyInput(id=r["hubspot_id"], properties={k: r[k] for k in fields})
                    for r in batch]
        )  # fmt: skip
        try:
            limited(hs)
            resp = hs.crm.companies.batch_api.update(
                batch_input_simple_public_object_batch_input=body
            )
        except Exception as e:  # each hubspot package has its own ApiException class
            if getattr(e, "status", None) is None:
                raise
            failed += [(r["domain"], str(getattr(e, "body", e))[:200]) for r in batch]
            continue
        bad = {i for err in getattr(resp, "errors", None) or []
               for i in (err.context or {}).get("ids", [])}  # fmt: skip
        for r in batch:
            (failed.append((r["domain"], "rejected")) if r["hubspot_id"] in bad
             else written.append(r["domain"]))  # fmt: skip
    done = todo[todo["domain"].isin(written)].drop(columns=["hubspot_id"])
    _update_ledger(lake, ledger, done, key="domain", name="companies_ledger")
    counts.update(written=len(written), failed=len(failed), not_in_crm=len(missing))
    if failed:
        log.warning("HubSpot companies: %s failed, e.g. %s", len(failed), failed[:3])
    log.info("HubSpot companies: %(written)s written, %(unchanged)s unchanged, "
             "%(not_in_crm)s without a company record", counts)  # fmt: skip
    return counts
