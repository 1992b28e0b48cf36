"""A synthetic product-led company: accounts, users with hidden buying intent, events, outcomes.

Deterministic from a seed, and streaming: each user is generated from its own seeded generator, so
any number of events is produced one user at a time without holding them all in memory.

Calibrated to published PLG benchmarks (OpenView, Pocus, Correlated): roughly 8-12% of sign-ups
carry real buying intent; a sensible weighted model flags 5-15% of sign-ups; those PQLs win at
15-30% while non-PQLs win at a small fraction of that.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

EVENT_TYPES = (
    "Signed Up",
    "Logged In",
    "Onboarding Completed",
    "Project Created",
    "Core Feature Used",
    "Teammate Invited",
    "Integration Connected",
    "Report Exported",
    "Pricing Page Viewed",
    "Usage Limit Hit",
    "Billing Page Viewed",
    "Help Article Viewed",
    "Settings Updated",
    "Page Viewed",
)

INDUSTRIES = (
    ("Software", 0.28),
    ("Financial Services", 0.10),
    ("Healthcare", 0.08),
    ("Retail", 0.12),
    ("Education", 0.10),
    ("Manufacturing", 0.08),
    ("Media", 0.09),
    ("Non-profit", 0.07),
    ("Consulting", 0.08),
)
TARGET_INDUSTRIES = {"Software", "Financial Services", "Healthcare"}
COUNTRIES = (
    ("US", 0.45),
    ("GB", 0.12),
    ("DE", 0.10),
    ("FR", 0.07),
    ("CA", 0.08),
    ("AU", 0.05),
    ("IN", 0.08),
    ("BR", 0.05),
)
FREE_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com", "proton.me")
FIRST = [
    "ana",
    "bo",
    "chen",
    "dara",
    "eli",
    "fatima",
    "gus",
    "hana",
    "ivan",
    "jo",
    "kai",
    "lena",
    "mo",
    "nia",
    "omar",
    "pia",
    "quinn",
    "raj",
    "sara",
    "tom",
    "uma",
    "vic",
    "wen",
    "xia",
    "yara",
    "zoe",
]
LAST = [
    "smith",
    "garcia",
    "chen",
    "muller",
    "rossi",
    "kim",
    "patel",
    "silva",
    "novak",
    "cohen",
    "okafor",
    "berg",
    "costa",
    "ito",
    "larsen",
    "dubois",
    "nowak",
    "reyes",
]
WORDS = [
    "acme",
    "blue",
    "north",
    "lumen",
    "pixel",
    "orbit",
    "cedar",
    "delta",
    "vertex",
    "harbor",
    "summit",
    "nimbus",
    "quartz",
    "atlas",
    "ember",
    "falcon",
    "granite",
    "juniper",
    "kinetic",
    "meadow",
]
FEATURES = ("dashboards", "automations", "workflows", "reports", "sheets")
INTEGRATIONS = ("slack", "salesforce", "hubspot", "github", "jira", "google-drive", "zapier")


@dataclass(frozen=True)
class WorldSpec:
    """What world to build. The world ends at midnight UTC after its last day."""

    seed: int = 42
    start: date = field(default_factory=lambda: date.today() - timedelta(days=43))
    days: int = 42
    users: int = 2000
    accounts: int = 400
    free_email_share: float = 0.25
    anonymous_visitors: int = 300
    duplicate_share: float = 0.004
    # Another product: the demo's event names renamed, e.g. (("Core Feature Used",
    # "Dashboard Built"), ...); buyers behave the same, under the other names.
    event_names: tuple[tuple[str, str], ...] = ()
    # "mirror": buyers show intent through the very signals config/pql.yaml weighs (invites,
    # integrations, pricing views, heavy use). "hidden": buyers use the product no more than
    # anyone, invite, connect and view pricing at everyone's rate, and show intent through
    # reports, projects and billing views (signals the default config does not name); company
    # size matters, industry does not; and some users with no intent convert anyway.
    buyers: str = "mirror"

    def __post_init__(self):
        if self.buyers not in ("mirror", "hidden"):
            raise ValueError(f"buyers must be 'mirror' or 'hidden', got {self.buyers!r}")

    @property
    def hidden(self) -> bool:
        return self.buyers == "hidden"

    @property
    def end(self) -> datetime:
        return datetime.combine(self.start + timedelta(days=self.days), datetime.min.time(), UTC)


@dataclass(frozen=True)
class Account:
    key: str
    domain: str
    name: str
    employees: int
    industry: str
    country: str

    @property
    def fit(self) -> float:
        """0..1: bigger companies in target industries buy more often."""
        size = min(1.0, max(0.0, (math.log10(self.employees) - 1.0) / 2.0))
        return 0.7 * size + 0.3 * (self.industry in TARGET_INDUSTRIES)


@dataclass(frozen=True)
class User:
    user_id: str
    device_id: str
    email: str
    first_name: str
    last_name: str
    account: Account
    free_email: bool
    signup_at: datetime
    buyer: bool
    engagement: float  # how heavily they use the product, 0..~2.5


@dataclass(frozen=True)
class Outcome:
    """The truth for one user: when a meeting was booked and a deal won (None if never)."""

    user_id: str
    meeting_at: datetime | None
    deal_created_at: datetime | None
    won_at: datetime | None
    amount: float | None


def rng_for(spec: WorldSpec, *key) -> random.Random:
    digest = hashlib.blake2b(repr((spec.seed, *key)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _weighted(rng: random.Random, pairs) -> str:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def accounts(spec: WorldSpec) -> list[Account]:
    """The companies users work at (a few hundred: small enough to hold)."""
    out = []
    for i in range(spec.accounts):
        rng = rng_for(spec, "account", i)
        a, b = rng.sample(WORDS, 2)
        employees = max(1, int(rng.lognormvariate(math.log(35), 1.5)))
        out.append(
            Account(
                key=f"acct_{i:05d}",
                domain=f"{a}{b}{i}.{rng.choice(('com', 'io', 'co', 'dev'))}",
                name=f"{a.title()} {b.title()}",
                employees=min(employees, 50_000),
                industry=_weighted(rng, INDUSTRIES),
                country=_weighted(rng, COUNTRIES),
            )
        )
    return out


def users(spec: WorldSpec, accts: list[Account] | None = None) -> Iterator[User]:
    """Every user who signs up during the world, in a stable order."""
    accts = accts or accounts(spec)
    span = spec.days * 86400
    for i in range(spec.users):
        rng = rng_for(spec, "user", i)
        acct = accts[
            min(int(rng.paretovariate(1.2)) - 1, len(accts) - 1)
            if rng.random() < 0.3
            else rng.randrange(len(accts))
        ]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        free = rng.random() < spec.free_email_share
        domain = rng.choice(FREE_DOMAINS) if free else acct.domain
        email = f"{first}.{last}{i}@{domain}"
        fit = _size(acct) if spec.hidden else acct.fit
        p_buyer = (0.03 + 0.16 * fit) * (0.5 if free else 1.0)
        buyer = rng.random() < p_buyer
        # Some non-buyers are power users without budget: they make PQL precision realistic.
        # (Hidden-world buyers use the product exactly as users without intent do.)
        if buyer and not spec.hidden:
            engagement = rng.uniform(0.9, 2.4)
        elif rng.random() < 0.07:
            engagement = rng.uniform(0.8, 1.8)
        else:
            engagement = rng.uniform(0.0, 0.7)
        yield User(
            user_id=f"u_{i:07d}",
            device_id=f"{rng.getrandbits(48):012x}",
            email=email,
            first_name=first.title(),
            last_name=last.title(),
            account=acct,
            free_email=free,
            signup_at=datetime.combine(spec.start, datetime.min.time(), UTC)
            + timedelta(seconds=rng.randrange(span)),
            buyer=buyer,
            engagement=engagement,
        )


def outcome(spec: WorldSpec, user: User) -> Outcome:
    """The user's true sales outcome from intent, engagement and fit (future dates included)."""
    rng = rng_for(spec, "outcome", user.user_id)
    fit = _size(user.account) if spec.hidden else user.account.fit
    if spec.hidden and not user.buyer:
        # Noise converters: a flat chance, whatever they do in the product.
        p_meeting, p_won = 0.03, 0.25
        delay = 2 + rng.uniform(0, spec.days)
    elif user.buyer:
        p_meeting = (0.45 + 0.4 * fit) * (0.6 if user.free_email else 1.0)
        p_won = 0.45 + 0.35 * fit
        delay = 4 + rng.gammavariate(2.0, 5.0)
    else:
        p_meeting = 0.015 + 0.03 * fit * min(user.engagement, 1.0)
        p_won = 0.12
        delay = 2 + rng.uniform(0, spec.days)
    if rng.random() >= p_meeting:
        return Outcome(user.user_id, None, None, None, None)
    meeting_at = _business_time(rng, user.signup_at + timedelta(days=delay))
    deal_created_at = meeting_at + timedelta(hours=rng.uniform(2, 48))
    won_at = None
    if rng.random() < p_won:
        won_at = _business_time(
            rng, deal_created_at + timedelta(days=7 + rng.gammavariate(2.0, 6.0))
        )
    seats = max(3, min(user.account.employees, 500) // rng.choice((2, 3, 5)))
    return Outcome(user.user_id, meeting_at, deal_created_at, won_at, float(seats * 240))


def _size(account: Account) -> float:
    """0..1 by company size alone (the hidden world's fit: industry does not matter)."""
    return min(1.0, max(0.0, (math.log10(account.employees) - 1.0) / 2.0))


def _business_time(rng: random.Random, t: datetime) -> datetime:
    return t.replace(hour=rng.randrange(9, 18), minute=rng.randrange(60), second=0, microsecond=0)


def events(spec: WorldSpec, user: User) -> Iterator[dict]:
    """The user's events as Mixpanel export lines, in time order, up to the end of the world."""
    return _renamed(spec, _events(spec, user))


def _renamed(spec: WorldSpec, lines: Iterator[dict]) -> Iterator[dict]:
    names = dict(spec.event_names)
    if not names:
        return lines
    return ({**line, "event": names.get(line["event"], line["event"])} for line in lines)


def _events(spec: WorldSpec, user: User) -> Iterator[dict]:
    rng = rng_for(spec, "events", user.user_id)
    end = spec.end
    base = {
        "distinct_id": user.user_id,
        "$user_id": user.user_id,
        "$device_id": user.device_id,
        "mp_lib": "web",
        "$os": rng.choice(("Mac OS X", "Windows", "Linux")),
        "$browser": rng.choice(("Chrome", "Firefox", "Safari", "Edge")),
        "mp_country_code": user.account.country,
        "plan": "free",
    }
    # Anonymous visits before sign-up: exported under the merged user id (Simplified ID Merge).
    for _ in range(rng.randrange(0, 4)):
        t = user.signup_at - timedelta(minutes=rng.uniform(5, 60 * 24 * 5))
        name = "Pricing Page Viewed" if rng.random() < 0.3 else "Page Viewed"
        yield _line(rng, name, t, base, {"$current_url": "https://example.app/pricing"})
    yield _line(
        rng,
        "Signed Up",
        user.signup_at,
        base,
        {"email": user.email, "signup_method": rng.choice(("google", "email"))},
    )
    day0 = user.signup_at.replace(hour=0, minute=0, second=0, microsecond=0)
    e = user.engagement
    for d in range((end - day0).days):
        day = day0 + timedelta(days=d)
        p_active = (0.6 + 0.15 * e) * math.exp(-d / (4 + 14 * e)) + (0.04 + 0.12 * e)
        if d > 0 and rng.random() >= min(p_active, 0.97):
            continue
        t = max(day + timedelta(hours=rng.uniform(7, 21)), user.signup_at + timedelta(minutes=1))
        for name, props in _day_events(rng, user, d, spec.hidden):
            t += timedelta(seconds=rng.randrange(5, 900))
            if t >= end:
                return
            yield _line(rng, name, t, base, props)


def _day_events(
    rng: random.Random, user: User, d: int, hidden: bool = False
) -> list[tuple[str, dict]]:
    e = user.engagement
    # In the hidden world the default config's signals carry no intent: buyers look like others.
    buyer = user.buyer and not hidden
    quiet = user.buyer and hidden  # intent shows only in reports, projects and billing views
    out: list[tuple[str, dict]] = [("Logged In", {})]
    if d <= 2 and rng.random() < (0.8 if buyer else 0.45) / 2:
        out.append(("Onboarding Completed", {}))
    out += [("Page Viewed", {})] * _poisson(rng, 2)
    core = _poisson(rng, 0.6 + 2.2 * e)
    out += [("Core Feature Used", {"feature": rng.choice(FEATURES)})] * core
    if rng.random() < 0.05 + 0.05 * e + (0.15 if quiet else 0.0):
        out.append(("Project Created", {}))
    if rng.random() < 0.04 + 0.06 * e + (0.20 if quiet else 0.0):
        out.append(("Report Exported", {"format": rng.choice(("pdf", "csv"))}))
    if rng.random() < 0.12:
        out.append(("Help Article Viewed", {}))
    if rng.random() < 0.04:
        out.append(("Settings Updated", {}))
    if rng.random() < (0.10 if buyer else 0.006 + 0.01 * e):
        for _ in range(rng.choice((1, 1, 2, 3))):
            out.append(("Teammate Invited", {"invitee_domain": user.email.split("@")[1]}))
    if rng.random() < (0.06 if buyer else 0.004 + 0.006 * e):
        out.append(("Integration Connected", {"integration": rng.choice(INTEGRATIONS)}))
    if rng.random() < (0.14 if buyer else 0.01):
        out.append(("Pricing Page Viewed", {"$current_url": "https://example.app/pricing"}))
    if (buyer or hidden) and rng.random() < (0.10 if quiet else 0.01 if hidden else 0.05):
        out.append(("Billing Page Viewed", {}))
    if core >= 5 and rng.random() < 0.35:
        out.append(("Usage Limit Hit", {"limit": "projects"}))
    rng.shuffle(out[1:])
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: fine for the small rates used here.
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _line(rng: random.Random, name: str, t: datetime, base: dict, extra: dict) -> dict:
    ts = int(t.timestamp())
    # Most events are processed within seconds; a few arrive late (offline clients).
    lag_ms = (
        rng.randrange(200, 5000) if rng.random() > 0.01 else rng.randrange(3600, 86400 * 3) * 1000
    )
    props = {
        "time": ts,
        **base,
        "$insert_id": f"{rng.getrandbits(64):016x}",
        "mp_processing_time_ms": ts * 1000 + lag_ms,
        **extra,
    }
    return {"event": name, "properties": props}


def anonymous_events(spec: WorldSpec) -> Iterator[dict]:
    """Visitors who never sign up: device ids only, never an email (they must never be scored)."""
    return _renamed(spec, _anonymous_events(spec))


def _anonymous_events(spec: WorldSpec) -> Iterator[dict]:
    for i in range(spec.anonymous_visitors):
        rng = rng_for(spec, "visitor", i)
        device = f"{rng.getrandbits(48):012x}"
        base = {"distinct_id": f"$device:{device}", "$device_id": device, "mp_lib": "web"}
        t0 = datetime.combine(spec.start, datetime.min.time(), UTC) + timedelta(
            seconds=rng.randrange(spec.days * 86400)
        )
        for k in range(rng.randrange(1, 6)):
            name = rng.choice(("Page Viewed", "Page Viewed", "Pricing Page Viewed"))
            t = t0 + timedelta(minutes=3 * k)
            if t < spec.end:
                yield _line(rng, name, t, base, {})
