"""Build a synthetic world into the sandbox: event files, Engage profiles, and the CRM."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from sandbox import amplitude, mixpanel, world
from sandbox.hubspot import HubSpotStore
from sandbox.state import SandboxState
from sandbox.world import WorldSpec

Progress = Callable[[int], None]


def _iso(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def build(
    state: SandboxState,
    spec: WorldSpec,
    progress: Progress | None = None,
    sources: tuple[str, ...] = ("mixpanel",),
    crms: tuple[str, ...] = ("hubspot",),
) -> dict:
    """Write the world's events, profiles and CRM records into the sandbox; returns counts.

    Events stream one user at a time to each source's files (Mixpanel day files and, when
    asked for, Amplitude upload-hour files). The CRM records go to each of `crms` (hubspot,
    salesforce). The true outcomes of every user go to world/truth.parquet so tests can
    check the pipeline against them.
    """
    accts = world.accounts(spec)
    dup_rng = world.rng_for(spec, "duplicates")
    amp_rng = world.rng_for(spec, "amplitude")
    amp_project = amplitude.credentials(state)["project_id"]
    truth, n_events, n_dupes = [], 0, 0
    with ExitStack() as stack:
        mp = stack.enter_context(mixpanel.DayWriter(state)) if "mixpanel" in sources else None
        amp = stack.enter_context(amplitude.HourWriter(state)) if "amplitude" in sources else None

        def emit(line: dict) -> None:
            if mp:
                mp.write(line)
            if amp:
                amp.write(amplitude.to_amplitude(line, amp_rng, amp_project))

        for user in world.users(spec, accts):
            for line in world.events(spec, user):
                emit(line)
                n_events += 1
                if dup_rng.random() < spec.duplicate_share:
                    emit(line)  # sent twice: the same 4-field key (and insert id) again
                    n_dupes += 1
            o = world.outcome(spec, user)
            truth.append(
                {**_user_row(user), **{k: v for k, v in asdict(o).items() if k != "user_id"}}
            )
            if progress:
                progress(1)
        for line in world.anonymous_events(spec):
            emit(line)
            n_events += 1
    mixpanel.upsert_profiles(
        state,
        (
            (
                t["user_id"],
                {
                    "$email": t["email"],
                    "$name": f"{t['first_name']} {t['last_name']}",
                    "$created": t["signup_at"].strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            for t in truth
        ),
    )
    crm = _seed_crms(state, spec, accts, truth, crms)
    _write_truth(state, spec, truth)
    return {
        "users": len(truth),
        "accounts": len(accts),
        "events": n_events + n_dupes,
        "duplicates": n_dupes,
        **crm,
    }


def crms_only(state: SandboxState, spec: WorldSpec, crms: tuple[str, ...] = ("hubspot",)) -> dict:
    """Only the CRM side of the world (no event files): for tests of the outcomes pull."""
    accts = world.accounts(spec)
    truth = truth_rows(spec, accts)
    counts = _seed_crms(state, spec, accts, truth, crms)
    _write_truth(state, spec, truth)
    return counts


def _seed_crms(state: SandboxState, spec: WorldSpec, accts, truth: list[dict], crms) -> dict:
    counts = _seed_crm(state, spec, accts, truth) if "hubspot" in crms else {}
    if "salesforce" in crms:
        from sandbox import salesforce

        seeded = salesforce.seed(state, spec, accts, truth)
        counts |= {f"salesforce_{k}": v for k, v in seeded.items()}
    return counts


def truth_rows(spec: WorldSpec, accts: list[world.Account] | None = None) -> list[dict]:
    """Every user's row of world/truth.parquet (who they are, their true outcomes), without
    generating their events: what seeding a CRM needs."""
    return [
        {**_user_row(u), **{k: v for k, v in asdict(world.outcome(spec, u)).items()
                            if k != "user_id"}}
        for u in world.users(spec, accts)
    ]  # fmt: skip


def _user_row(u: world.User) -> dict:
    return {
        "user_id": u.user_id,
        "email": u.email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "account_domain": u.account.domain,
        "employees": u.account.employees,
        "industry": u.account.industry,
        "free_email": u.free_email,
        "signup_at": u.signup_at,
        "buyer": u.buyer,
        "engagement": u.engagement,
    }


def _seed_crm(state: SandboxState, spec: WorldSpec, accts, truth: list[dict]) -> dict:
    """Companies for every account; contacts for most sign-ups; meetings and deals that happened."""
    store = HubSpotStore(state)
    company_rows = [
        {
            "domain": a.domain,
            "name": a.name,
            "numberofemployees": str(a.employees),
            "industry": a.industry,
            "country": a.country,
        }
        for a in accts
    ]
    company_ids = dict(
        zip([a.domain for a in accts], store.create("companies", company_rows), strict=True)
    )
    rng = world.rng_for(spec, "crm")
    end = spec.end
    # Form capture misses some sign-ups; anyone who met sales is in the CRM.
    in_crm = [
        t
        for t in truth
        if rng.random() < 0.9 or (t["meeting_at"] is not None and t["meeting_at"] < end)
    ]
    upserted = store.upsert(
        "contacts",
        [
            {
                "email": t["email"],
                "firstname": t["first_name"],
                "lastname": t["last_name"],
                "lifecyclestage": "lead",
            }
            for t in in_crm
        ],
        id_property="email",
    )
    contact = {t["email"]: rid for t, (rid, _) in zip(in_crm, upserted, strict=True)}
    company = {t["email"]: company_ids[t["account_domain"]] for t in in_crm if not t["free_email"]}
    store.associate_many("contacts", "companies", [(contact[e], c) for e, c in company.items()])

    met = [t for t in in_crm if t["meeting_at"] is not None and t["meeting_at"] < end]
    meeting_ids = store.create(
        "meetings",
        [
            {
                "hs_timestamp": _iso(t["meeting_at"]),
                "hs_meeting_title": "Intro call",
                "hs_meeting_outcome": "COMPLETED",
                "hs_meeting_start_time": _iso(t["meeting_at"]),
            }
            for t in met
        ],
    )
    # Meetings that did not happen: some real ones were rescheduled from an earlier, cancelled
    # slot; a few people booked and never came. Their own random stream keeps the rest as is.
    rng_unheld = world.rng_for(spec, "crm-unheld")
    unheld = []
    for t in in_crm:
        if t["meeting_at"] is not None and t["meeting_at"] < end:
            if rng_unheld.random() < 0.15:
                at = t["meeting_at"] - timedelta(days=rng_unheld.uniform(1, 4))
                if at > t["signup_at"]:
                    unheld.append((t, at, "CANCELED"))
        elif rng_unheld.random() < 0.03:
            at = t["signup_at"] + timedelta(days=rng_unheld.uniform(1, spec.days))
            if at < end:
                unheld.append((t, at, "NO_SHOW"))
    unheld_ids = store.create(
        "meetings",
        [{"hs_timestamp": _iso(at), "hs_meeting_title": "Intro call", "hs_meeting_outcome": o,
          "hs_meeting_start_time": _iso(at)} for _, at, o in unheld],
    )  # fmt: skip
    store.associate_many("meetings", "contacts", [
        (i, contact[t["email"]]) for i, (t, _, _) in zip(unheld_ids, unheld, strict=True)
    ])  # fmt: skip
    dealt = [
        (t, t["won_at"] is not None and t["won_at"] < end)
        for t in met
        if t["deal_created_at"] is not None and t["deal_created_at"] < end
    ]
    deal_ids = store.create(
        "deals",
        [
            {
                "dealname": f"{t['account_domain']} - {t['first_name']} {t['last_name']}",
                "amount": str(t["amount"]),
                "pipeline": "default",
                "dealstage": "closedwon" if won else "qualifiedtobuy",
                "closedate": _iso(t["won_at"] if won else t["deal_created_at"]),
            }
            for t, won in dealt
        ],
    )
    for kind, ids, rows in (
        ("meetings", meeting_ids, met),
        ("deals", deal_ids, [t for t, _ in dealt]),
    ):
        store.associate_many(
            kind, "contacts", [(i, contact[t["email"]]) for i, t in zip(ids, rows, strict=True)]
        )
        store.associate_many(
            kind,
            "companies",
            [
                (i, company[t["email"]])
                for i, t in zip(ids, rows, strict=True)
                if t["email"] in company
            ],
        )
    return {
        "companies": len(accts),
        "contacts": len(contact),
        "meetings": len(met),
        "cancelled_or_no_show_meetings": len(unheld),
        "deals": len(dealt),
        "won_deals": sum(won for _, won in dealt),
    }


def _write_truth(state: SandboxState, spec: WorldSpec, truth: list[dict]) -> None:
    out = state.root / "world"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(truth), out / "truth.parquet")
    spec_doc = {**asdict(spec), "start": spec.start.isoformat(), "end": spec.end.isoformat()}
    (out / "spec.json").write_text(json.dumps(spec_doc, indent=2))


def truth(state: SandboxState):
    """The world's true users and outcomes (pandas DataFrame)."""
    import pandas as pd

    return pd.read_parquet(state.root / "world" / "truth.parquet")
