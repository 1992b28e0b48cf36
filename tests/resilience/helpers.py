"""Shared pieces of the resilience tests: a world of daily scores, Salesforce logins, and the
CRMs' contents read straight from the sandbox's stores (never through the pipeline's code)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pandas as pd

from sandbox.hubspot import HubSpotStore
from sandbox.salesforce import SalesforceStore

FIELDS = ("score", "flag", "qualified_at", "reasons", "model_version")
HUBSPOT = {
    "score": "pql_score",
    "flag": "pql_flag",
    "qualified_at": "pql_qualified_at",
    "reasons": "pql_reasons",
    "model_version": "pql_model_version",
}
SALESFORCE = {
    "score": "PQL_Score__c",
    "flag": "PQL_Flag__c",
    "qualified_at": "PQL_Qualified_At__c",
    "reasons": "PQL_Reasons__c",
    "model_version": "PQL_Model_Version__c",
}
REASONS = [
    "used the core feature {n} times in 14 days",
    "invited {t} teammates",
    "hit the usage limit twice",
    "viewed pricing {p} times",
    'connected Slack, Jira & "GitHub"',
    "250-employee SaaS company (Zürich)",
]


class ScoreWorld:
    """Users whose scores drift day by day, as the scoring step would write them.

    Each day a few users sign up and `change_share` of the others change score; a user keeps
    the first day it qualified (score >= 50), as the pipeline does. `version_change_day`
    switches the model version, which changes every record at once (a model rollout).
    """

    def __init__(
        self,
        seed: int,
        users: int = 300,
        signups_per_day: int = 10,
        change_share: float = 0.08,
        start: date = date(2026, 10, 1),
        version_change_day: int | None = None,
        bad_emails: tuple[str, ...] = (),
    ):
        self.rng = random.Random(seed)
        self.start, self.signups, self.share = start, signups_per_day, change_share
        self.version_change_day = version_change_day
        self.users: dict[str, dict] = {}
        self.bad_emails = bad_emails
        self.day_no = -1
        for _ in range(users):
            self._signup()

    def _signup(self) -> None:
        n = len(self.users)
        email = f"user{n}.{self.rng.choice(['ana', 'bo', 'chloé', 'dmitri'])}@acme{n % 37}.io"
        email = email.encode("ascii", "ignore").decode()  # a CRM-valid address
        self.users[email] = {"score": self.rng.choice([0, 5, 12, 20, 35, 48, 55, 70]),
                             "qualified_at": None, "user_key": f"u{n}"}  # fmt: skip

    def next_day(self) -> pd.DataFrame:
        """The scores snapshot of the next day."""
        self.day_no += 1
        today = self.start + timedelta(days=self.day_no)
        if self.day_no:
            for _ in range(self.signups):
                self._signup()
            for email in self.rng.sample(sorted(self.users), int(len(self.users) * self.share)):
                u = self.users[email]
                u["score"] = max(0, min(100, u["score"] + self.rng.randint(-30, 35)))
        moment = datetime.combine(today, datetime.min.time(), UTC)
        for u in self.users.values():
            if u["score"] >= 50 and u["qualified_at"] is None:
                u["qualified_at"] = moment + timedelta(seconds=self.rng.randint(0, 86_399))
        version = "weighted-v1"
        if self.version_change_day is not None and self.day_no >= self.version_change_day:
            version = "weighted-v2"
        rows = [
            {"email": e, "user_key": u["user_key"], "score": u["score"],
             "flag": u["score"] >= 50, "qualified_at": u["qualified_at"],
             "reasons": self._reasons(u["score"]), "model_version": version}
            for e, u in self.users.items()
        ] + [
            {"email": e, "user_key": f"bad{i}", "score": 60, "flag": True,
             "qualified_at": moment, "reasons": "x", "model_version": version}
            for i, e in enumerate(self.bad_emails)
        ]  # fmt: skip
        frame = pd.DataFrame(rows)
        frame["qualified_at"] = pd.to_datetime(frame["qualified_at"], utc=True)
        return frame

    @staticmethod
    def _reasons(score: int) -> str:
        if score < 10:
            return ""
        parts = [r.format(n=score // 3, t=score // 20, p=score % 7) for r in REASONS]
        return "; ".join(parts[: 1 + score // 25])


# --- what the CRM should hold, and what it holds --------------------------------------------


def normal(score, flag, qualified_at, reasons, model_version) -> tuple:
    """One record's five values in a form both CRMs' spellings compare equal in."""
    when = None
    if qualified_at is not None and not pd.isna(qualified_at) and qualified_at != "":
        when = pd.Timestamp(qualified_at)
        when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
        when = when.floor("s")
    flagged = flag if isinstance(flag, bool) else str(flag).lower() == "true"
    number = None if score is None or score == "" or pd.isna(score) else int(float(score))
    return (number, bool(flagged), when, reasons or None, model_version or None)


def expected(scores: pd.DataFrame, valid=lambda email: True) -> dict[str, tuple]:
    """email (lower case) → the values the scores say the CRM must hold."""
    out = {}
    for r in scores.itertuples(index=False):
        if isinstance(r.email, str) and valid(r.email):
            out[r.email.lower()] = normal(r.score, r.flag, r.qualified_at, r.reasons,
                                          r.model_version)  # fmt: skip
    return out


def hubspot_contacts(state) -> tuple[dict[str, tuple], Counter]:
    """email → values of every HubSpot contact, and how many contacts share each email."""
    held, count = {}, Counter()
    for r in HubSpotStore(state).list("contacts"):
        p = r["properties"]
        email = (p.get("email") or "").lower()
        count[email] += 1
        held[email] = normal(*(p.get(HUBSPOT[f]) for f in FIELDS))
    return held, count


def salesforce_people(state) -> tuple[dict[str, tuple], Counter]:
    """email → values of every open Lead and Contact, and how many records share each email."""
    store = SalesforceStore(state)
    cols = ", ".join(SALESFORCE[f] for f in FIELDS)
    held, count = {}, Counter()
    for soql in (f"SELECT Email, {cols} FROM Lead WHERE IsConverted = false",
                 f"SELECT Email, {cols} FROM Contact"):  # fmt: skip
        for r in store.query(soql):
            email = (r.get("Email") or "").lower()
            count[email] += 1
            held[email] = normal(*(r.get(SALESFORCE[f]) for f in FIELDS))
    return held, count


def mismatches(held: dict[str, tuple], want: dict[str, tuple]) -> dict[str, tuple]:
    """email → (held, wanted) wherever the CRM does not hold what was computed."""
    return {e: (held.get(e), v) for e, v in want.items() if held.get(e) != v}
