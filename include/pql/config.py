"""config/pql.yaml as pydantic models; errors name the key path, the line and what is allowed.

Long because it is the whole schema in one file (a reader sees every setting and its default
in one place) plus the error reporting that maps pydantic's locations to YAML lines. The
CRM's settings live with the CRM adapters (pql.crm.targets)."""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pql.crm.targets import (  # noqa: F401 (the CRM's settings live with the CRM adapters)
    CrmTarget,
    HubSpotTarget,
    SalesforceField,
    SalesforceTarget,
)
from pql.schema import Strict

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "pql.yaml"

FREE_EMAIL_DOMAINS = [
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.co.uk",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "gmx.de",
    "web.de",
    "mail.com",
    "yandex.ru",
    "mail.ru",
    "qq.com",
    "163.com",
    "zoho.com",
    "fastmail.com",
    "hey.com",
]

# Mixpanel: projects created before 2023-01-01 store local time; the docs also say
# "before 11 January 2023", so the days in between are ambiguous.
_LEGACY_CUTOFF = (date(2023, 1, 1), date(2023, 1, 11))

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]


def _cron(v: str) -> str:
    if len(v.split()) != 5:
        raise ValueError("must be a 5-field cron expression such as '0 3 * * *'")
    return v


Cron = Annotated[str, AfterValidator(_cron)]


class LakeSettings(Strict):
    root: Path = Path("../var/lake")


class MixpanelSource(Strict):
    name: Name = "mixpanel"
    kind: Literal["mixpanel"]
    connection_id: str = "mixpanel_default"
    project_id: int = Field(gt=0)
    residency: Literal["us", "eu", "in"] = "us"
    schedule: Cron = "0 3 * * *"
    bad_line_threshold: float = Field(0.01, ge=0, le=1)
    lookback_days: int = Field(2, ge=0, le=30)
    project_created: date | None = None
    project_timezone: str = "UTC"
    time_mode: Literal["auto", "utc", "local"] = "auto"
    profile_lookup: bool = True  # ask Engage for the email of users whose events have none
    queries_per_hour: int = Field(60, gt=0, le=3600)  # Mixpanel's export budget per project
    start_date: date | None = None  # the first day to extract; earlier runs fail (None: any)
    fetch_attempts: int = Field(6, ge=1, le=20)  # per window: errors and cut downloads, then fail

    @field_validator("project_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "must be an IANA time zone such as 'UTC' or 'America/New_York'"
            ) from None
        return v

    @model_validator(mode="after")
    def _time_mode_decidable(self):
        if self.time_mode == "auto" and self.project_created is None:
            raise ValueError(
                "set project_created (Mixpanel: Project Settings → Overview) or time_mode "
                "utc/local: projects created before 2023 export local time, newer ones UTC"
            )
        if (
            self.time_mode == "auto"
            and _LEGACY_CUTOFF[0] <= self.project_created < _LEGACY_CUTOFF[1]
        ):
            raise ValueError(
                f"projects created {_LEGACY_CUTOFF[0]}..{_LEGACY_CUTOFF[1]} are ambiguous in "
                "Mixpanel's docs: set time_mode to utc or local"
            )
        return self

    @property
    def local_time(self) -> bool:
        """Whether exported `time` and dates are in the project's zone rather than UTC."""
        if self.time_mode != "auto":
            return self.time_mode == "local"
        return self.project_created < _LEGACY_CUTOFF[0]


class AmplitudeSource(Strict):
    name: Name = "amplitude"
    kind: Literal["amplitude"]
    connection_id: str = "amplitude_default"
    residency: Literal["us", "eu"] = "us"
    schedule: Cron = "0 4 * * *"
    bad_line_threshold: float = Field(0.01, ge=0, le=1)
    lookback_days: int = Field(2, ge=0, le=30)
    availability_delay_hours: int = Field(3, ge=0, le=48)
    start_date: date | None = None  # the first day to extract; earlier runs fail (None: any)
    fetch_attempts: int = Field(6, ge=1, le=20)  # per window: errors and cut downloads, then fail


Source = Annotated[MixpanelSource | AmplitudeSource, Field(discriminator="kind")]


class Identity(Strict):
    email_properties: list[str] = ["$email", "email"]
    account_properties: list[str] = ["company_id"]
    free_email_domains: list[str] = Field(default_factory=lambda: list(FREE_EMAIL_DOMAINS))


class Enrichment(Strict):
    """Where account firmographics come from; missing data is a state, never an error."""

    provider: Literal["crm", "file", "api", "none"] = "crm"
    file: Path | None = None
    connection_id: str = "enrichment_default"  # provider 'api': the HTTP API's connection
    cache_ttl_days: int = Field(30, gt=0, le=365)  # a domain is asked again after this
    requests_per_second: float = Field(5, gt=0, le=100)
    max_requests_per_run: int = Field(5000, gt=0)  # the rest wait for the next run

    @model_validator(mode="after")
    def _file_needed(self):
        if self.provider == "file" and self.file is None:
            raise ValueError("provider 'file' needs 'file': a CSV or Parquet path")
        return self


FIRMOGRAPHICS = ("employees", "industry", "country", "revenue_band", "plan")


class DistinctFeature(Strict):
    """Distinct values of one event property, e.g. integrations connected."""

    name: Name
    event: str = Field(min_length=1)
    property: str = Field(min_length=1)


class Features(Strict):
    """The point-in-time features every model reads (names: see `pql validate`)."""

    class Spark(Strict):
        """Where the feature SQL runs when `engine: spark` (same catalogue, same frame)."""

        # local[N] / local[*]: a SparkSession inside the process that scores (the Airflow task,
        # the CLI); a cluster master (spark://..., yarn, k8s://...) works the same way in client
        # mode where that process can reach the cluster.
        master: str = Field("local[*]", min_length=1)
        # true: the score DAG spark-submits the feature job through the Airflow connection
        # `connection_id` (apache-airflow-providers-apache-spark; the connection gives the
        # master, deploy mode, queue and spark-submit binary), which writes the frame under
        # <lake>/features/; `master` is then not used.
        submit: bool = False
        connection_id: str = Field("spark_default", min_length=1)
        conf: dict[str, str] = Field(default_factory=dict)  # spark.* settings, e.g. memory
        # How the cluster addresses lake.root when its path differs there (file:///mnt/lake,
        # hdfs://nn/pql/lake); default: lake.root as it is.
        lake_uri: str | None = None

        @field_validator("conf", mode="before")
        @classmethod
        def _conf(cls, v):
            if not isinstance(v, dict):
                return v
            bad = [k for k in v if not str(k).startswith("spark.")]
            if bad:
                raise ValueError(f"Spark settings start with 'spark.'; got {bad}")
            # YAML numbers and booleans as Spark reads them: 64 → "64", true → "true"
            return {k: str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}

    engine: Literal["duckdb", "spark"] = "duckdb"  # where the feature SQL runs
    spark: Spark = Field(default_factory=Spark)
    windows: list[int] = Field([7, 14, 30], min_length=1)
    events: list[str] = Field(
        default_factory=lambda: [
            "Core Feature Used",
            "Teammate Invited",
            "Integration Connected",
            "Usage Limit Hit",
            "Pricing Page Viewed",
            "Billing Page Viewed",
            "Report Exported",
            "Project Created",
        ],
        min_length=1,
    )
    distinct: list[DistinctFeature] = Field(
        default_factory=lambda: [
            DistinctFeature(name="integrations", event="Integration Connected",
                            property="integration"),
        ]
    )  # fmt: skip
    active_window_days: int = Field(14, gt=0, le=365)  # "active user" for accounts and dormancy

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        bad = [w for w in v if not 1 <= w <= 365]
        if bad:
            raise ValueError(f"windows are days between 1 and 365; got {bad}")
        return sorted(set(v))

    def names(self) -> list[str]:
        """Every feature a rule or model may name, in a stable order."""
        out = []
        for w in self.windows:
            out += [f"{slug(e)}_{w}d" for e in self.events]
            out += [f"{d.name}_{w}d" for d in self.distinct]
            out.append(f"active_days_{w}d")
        out += ["days_since_last_seen", "days_since_first_seen", "free_email"]
        return out + [f for f in FIRMOGRAPHICS if f != "plan"] + ["plan"]


def slug(event: str) -> str:
    """An event name as part of a feature name: 'Core Feature Used' → core_feature_used."""
    return "_".join("".join(c if c.isalnum() else " " for c in event.lower()).split()) or "event"


def _known_event(v: str, info: ValidationInfo) -> str:
    events = (info.context or {}).get("events")
    if events is not None and v not in events:
        known = ", ".join(events)
        raise ValueError(f"unknown event {v!r}; tracked events (features.events): {known}")
    return v


def _known_feature(v: str, info: ValidationInfo) -> str:
    names = (info.context or {}).get("features")
    if names is not None and v not in names:
        close = [n for n in names if n.split("_")[0] == v.split("_")[0]] or names
        raise ValueError(f"unknown feature {v!r}; for example: {', '.join(close[:12])}")
    return v


KnownEvent = Annotated[str, Field(min_length=1), AfterValidator(_known_event)]
KnownFeature = Annotated[str, Field(min_length=1), AfterValidator(_known_feature)]


class CountSignal(Strict):
    """Points for each occurrence inside a window, optionally capped."""

    window_days: int = Field(gt=0, le=365)
    points_each: float
    max_points: float | None = None


class EventSignal(CountSignal):
    kind: Literal["event"]
    event: KnownEvent
    half_life_days: float | None = Field(None, gt=0)  # time decay: older events count less
    reason: str = "{event} {n} times in the last {window_days} days"


class ActiveDaysSignal(CountSignal):
    kind: Literal["active_days"]
    reason: str = "active {n} of the last {window_days} days"


class FirmographicSignal(Strict):
    kind: Literal["firmographic"]
    field: Literal["employees", "industry", "country", "revenue_band", "plan"]
    at_least: float | None = None
    one_of: list[str] | None = None
    points: float
    reason: str = "{value} {field}"

    @model_validator(mode="after")
    def _one_test(self):
        if (self.at_least is None) == (self.one_of is None):
            raise ValueError("give exactly one of 'at_least' (numbers) or 'one_of' (a list)")
        if self.field == "employees" and self.one_of is not None:
            raise ValueError("'employees' is a number: use 'at_least'")
        if self.field != "employees" and self.at_least is not None:
            raise ValueError(f"'{self.field}' is text: use 'one_of'")
        return self


class FreeEmailSignal(Strict):
    kind: Literal["free_email"]
    points: float = Field(le=0)
    reason: str = "signed up with a free email address"


class DormantSignal(Strict):
    """Negative points for a user inactive for `days` (a PQL that went quiet)."""

    kind: Literal["dormant"]
    days: int = Field(gt=0, le=365)
    points: float = Field(le=0)
    reason: str = "inactive for {n} days"


Signal = Annotated[
    EventSignal | ActiveDaysSignal | FirmographicSignal | FreeEmailSignal | DormantSignal,
    Field(discriminator="kind"),
]


class WeightedModel(Strict):
    kind: Literal["weighted"]
    version: str = Field(min_length=1, max_length=80)
    threshold: float = Field(gt=0, le=100)
    max_reasons: int = Field(3, ge=1, le=10)
    signals: list[Signal] = Field(min_length=1)

    @property
    def lookback(self) -> timedelta:
        """How far back the longest windowed signal reads."""
        days = [s.window_days for s in self.signals if hasattr(s, "window_days")]
        return timedelta(days=max(days, default=1))


class Rule(Strict):
    """One test on a feature: a number at least / at most a value, or text one of a list."""

    feature: KnownFeature
    at_least: float | None = None
    at_most: float | None = None
    one_of: list[str] | None = None
    reason: str | None = None  # plain words with {value}; default: generated from the test

    @model_validator(mode="after")
    def _one_test(self):
        tests = [t for t in (self.at_least, self.at_most, self.one_of) if t is not None]
        if len(tests) != 1:
            raise ValueError("give exactly one of 'at_least', 'at_most' or 'one_of'")
        text = self.feature in ("industry", "country", "revenue_band", "plan")
        if text != (self.one_of is not None):
            use = "'one_of' (a list)" if text else "'at_least' or 'at_most' (a number)"
            raise ValueError(f"'{self.feature}' is {'text' if text else 'a number'}: use {use}")
        return self


class ThresholdModel(Strict):
    """A PQL meets all (or any) of the rules; the score is the share of rules met."""

    kind: Literal["threshold"]
    version: str = Field(min_length=1, max_length=80)
    match: Literal["all", "any"] = "all"
    rules: list[Rule] = Field(min_length=1)
    max_reasons: int = Field(3, ge=1, le=10)


class PredictiveModel(Strict):
    """Trained on past outcomes from point-in-time features; a PQL's probability ≥ threshold."""

    kind: Literal["predictive"]
    version: str = Field("predictive", min_length=1, max_length=40)  # prefix of trained versions
    target: Literal["won", "meeting"] = "won"
    horizon_days: int = Field(30, gt=0, le=365)  # converts within this many days of the moment
    threshold: float = Field(0.2, gt=0, lt=1)
    training_days: int = Field(180, gt=7, le=1095)  # history sampled for training moments
    holdout_days: int = Field(28, gt=0, le=365)  # the latest moments, held out for evaluation
    sample_every_days: int = Field(7, gt=0, le=90)  # one training moment every N days
    max_reasons: int = Field(3, ge=1, le=10)

    @model_validator(mode="after")
    def _room_to_train(self):
        if self.holdout_days + self.horizon_days >= self.training_days:
            raise ValueError("training_days must exceed holdout_days + horizon_days")
        return self


Model = Annotated[WeightedModel | ThresholdModel | PredictiveModel, Field(discriminator="kind")]


class Accounts(Strict):
    """When an account is product-qualified (PQA): any (or all) of the configured tests."""

    match: Literal["any", "all"] = "any"
    min_qualified_users: int | None = Field(3, ge=1)
    min_qualified_share: float | None = Field(0.5, gt=0, le=1)  # of its active users
    min_active_users: int = Field(1, ge=1)  # below this the share test does not apply

    @model_validator(mode="after")
    def _some_test(self):
        if self.min_qualified_users is None and self.min_qualified_share is None:
            raise ValueError("give min_qualified_users, min_qualified_share or both")
        return self


class Routing(Strict):
    """What happens once when a lead newly qualifies (each channel at most once per lead)."""

    crm_task: bool = False  # a follow-up task for the contact's owner in the CRM
    task_subject: str = "Product-qualified lead: follow up with {email} (score {score})"
    task_due_hours: int = Field(24, ge=0, le=24 * 30)
    slack: bool = False  # a message to a Slack incoming webhook
    slack_connection_id: str = "slack_pql"  # HTTP connection: host = the webhook URL


EmailAddress = Annotated[
    str, Field(pattern=r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$", max_length=254)
]


Segment = Literal[
    "model_version", "size_band", "industry", "source", "country", "plan", "revenue_band"
]


class Outcomes(Strict):
    """The weekly conversion report: when it runs and where it is delivered (once per week)."""

    schedule: Cron = "0 6 * * 1"
    attribution_window_days: int = Field(90, gt=0, le=730)
    # Breakdowns besides weekly cohorts: the model version that qualified the PQL, company
    # size band, and any snapshot column (industry, source = where a user was first seen,
    # country, plan, revenue_band).
    segments: list[Segment] = ["model_version", "size_band", "industry", "source"]
    email_to: list[
        EmailAddress
    ] = []  # the report by email (HTML attached) to these; empty: no email
    smtp_connection_id: str = "smtp_default"  # SMTP connection; extra from_email = the sender
    slack: bool = False  # headline numbers and a link to a Slack incoming webhook
    slack_connection_id: str = "slack_pql"  # HTTP connection: password = the webhook URL
    report_url: str = Field("", pattern=r"^(https?://\S+)?$")  # the Airflow report view, for links
    # The CRM is pulled incrementally: records modified since the last pull minus this margin
    # (clock skew, search indexing delay), and in full every `full_pull_days` (0: only the
    # first time or when asked), which is when records deleted in HubSpot leave the store.
    pull_margin_minutes: int = Field(60, ge=0, le=7 * 24 * 60)
    full_pull_days: int = Field(28, ge=0)
    # A meeting counts when its outcome is not one of these (HubSpot's hs_meeting_outcome
    # values; on Salesforce, the values of `salesforce_meeting_outcome_field` when set).
    excluded_meeting_outcomes: list[str] = ["CANCELED", "NO_SHOW"]
    salesforce_meeting_outcome_field: SalesforceField | None = None  # e.g. Meeting_Outcome__c
    # A health check or backtest verdict needs at least this many conversions (and mature
    # users) behind it; below, it says "not enough data", never pass or fail.
    min_conversions: int = Field(10, ge=1)


class Alerts(Strict):
    """Where a task that failed for good (after its retries) is reported, besides Airflow."""

    slack: bool = False  # a message to a Slack incoming webhook
    slack_connection_id: str = "slack_pql"  # HTTP connection: password = the webhook URL
    email_to: list[EmailAddress] = []  # and/or an email to these (through the SMTP connection)
    smtp_connection_id: str = "smtp_default"  # SMTP connection; extra from_email = the sender


class Freshness(Strict):
    """Intraday runs (README, "Speed to lead"): every few minutes, what arrived since the last
    run is extracted, the users it touched are rescored, and new PQLs and un-flags reach the
    CRM and routing at once. Off (`every_minutes: 0`): only the daily runs."""

    every_minutes: int = Field(0, ge=0, le=120)  # 0: off; 5-10 when on
    # Mixpanel: each run asks again for events processed this long before the newest one it
    # has (the export's processing order is not strictly the time events become exportable).
    overlap_minutes: int = Field(10, ge=1, le=24 * 60)
    # A score change that does not flip the flag waits for the daily run unless it moves the
    # score at least this much (a fresh PQL should not cost a CRM write per event).
    min_score_change: float = Field(10, ge=0, le=100)
    # Alert when the newest data the intraday runs brought is older than this.
    max_lag_minutes: int = Field(30, ge=5, le=24 * 60)

    @property
    def enabled(self) -> bool:
        return self.every_minutes > 0

    def runs_per_hour(self) -> int:
        return -(-60 // self.every_minutes) if self.enabled else 0


class Config(Strict):
    """The whole of config/pql.yaml."""

    lake: LakeSettings = LakeSettings()
    sources: list[Source] = Field(min_length=1)
    identity: Identity = Identity()
    enrichment: Enrichment = Enrichment()
    features: Features = Features()
    model: Model
    accounts: Accounts = Accounts()
    crm: CrmTarget
    routing: Routing = Routing()
    outcomes: Outcomes = Outcomes()
    alerts: Alerts = Alerts()
    freshness: Freshness = Freshness()

    @model_validator(mode="after")
    def _unique_sources(self):
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _export_budget_leaves_room(self):
        runs = self.freshness.runs_per_hour()
        for i, s in enumerate(self.sources):
            if runs and s.kind == "mixpanel" and s.queries_per_hour <= runs:
                raise ValueError(
                    f"freshness.every_minutes {self.freshness.every_minutes} makes {runs} "
                    f"export queries an hour, all of sources[{i}].queries_per_hour "
                    f"({s.queries_per_hour}): the daily run and backfills need some; run less "
                    "often"
                )
        return self

    def first_day(self) -> date:
        """The first day the pipeline covers: the earliest source start_date, else EARLIEST
        (so a backfill of any day with data runs its tasks)."""
        days = [s.start_date for s in self.sources if s.start_date]
        return min(days) if days else EARLIEST

    def intraday_sources(self) -> list[Source]:
        """The sources the intraday runs extract: all of them when freshness is on."""
        return list(self.sources) if self.freshness.enabled else []

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r}; configured: {[s.name for s in self.sources]}")


EARLIEST = date(2010, 1, 1)  # the DAGs' start when no source sets a start_date


class ConfigError(Exception):
    """Every mistake in a config file, each with its key path, line and what is allowed."""

    def __init__(self, path: Path, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__(f"{path}: {len(problems)} problem(s)\n" + "\n".join(problems))


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a config file (default: $PQL_CONFIG, else config/pql.yaml).

    Relative paths inside it are resolved against the file's folder; $PQL_LAKE overrides lake.root.
    """
    path = Path(path or os.environ.get("PQL_CONFIG") or DEFAULT_CONFIG).resolve()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [f"cannot read the file: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(path, [f"line {line}: not UTF-8 text (byte {e.start})"]) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        if line is None and isinstance(getattr(e, "position", None), int):  # a ReaderError
            line = text[: e.position].count("\n") + 1
        where = f"line {line}: " if line else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or e
        raise ConfigError(path, [f"{where}not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(path, ["the file must be a mapping of sections (lake, sources, ...)"])
    if repeated := _repeated_keys(node):
        raise ConfigError(path, repeated)
    try:
        cfg = Config.model_validate(data, context=_catalogue(data))
    except ValidationError as e:
        lines = _line_index(node)
        raise ConfigError(path, [_describe(err, lines) for err in e.errors()]) from None
    root = Path(os.environ.get("PQL_LAKE") or (path.parent / cfg.lake.root)).resolve()
    enrichment = cfg.enrichment
    if enrichment.file is not None:
        enrichment = enrichment.model_copy(update={"file": (path.parent / enrichment.file)})
    return cfg.model_copy(update={"lake": LakeSettings(root=root), "enrichment": enrichment})


def _catalogue(data: dict) -> dict | None:
    """Tracked events and feature names, for checking the rules and signals that name them."""
    try:
        features = Features.model_validate(data.get("features") or {})
    except ValidationError:
        return None  # reported with the rest
    return {"events": features.events, "features": features.names()}


def _repeated_keys(node, prefix=()) -> list[str]:
    """A key given twice in one mapping (YAML would silently keep the last one)."""
    found = []
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key, value in node.value:
            loc = (*prefix, key.value)
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
            if key.value in first:
                found.append(f"line {key.start_mark.line + 1}: {path}: given twice (also on "
                             f"line {first[key.value]}); keep one")  # fmt: skip
            first.setdefault(key.value, key.start_mark.line + 1)
            found += _repeated_keys(value, (*prefix, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _repeated_keys(item, (*prefix, i))
    return found


def _line_index(node, prefix=()) -> dict[tuple, int]:
    """Map each key path in the YAML document to its 1-based line."""
    index: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = (*prefix, key.value)
            index[path] = key.start_mark.line + 1
            index.update(_line_index(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index[(*prefix, i)] = item.start_mark.line + 1
            index.update(_line_index(item, (*prefix, i)))
    return index


def _describe(err: dict[str, Any], lines: dict[tuple, int]) -> str:
    raw = list(err["loc"])
    loc = _strip_tags(raw)
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top)"
    line = next(
        (lines[tuple(loc[:n])] for n in range(len(loc), 0, -1) if tuple(loc[:n]) in lines), None
    )
    where = f"line {line}: " if line else ""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        model = _walk(raw[:-1])
        keys = sorted(model.model_fields, key=lambda k: k != "kind") if model else []
        allowed = ", ".join(keys) or "see config/pql.yaml"
        msg = f"unknown key; allowed here: {allowed}"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = err["ctx"].get("expected_tags") or ", ".join(_tags(_walk_annotation(raw)))
        msg = f"'kind' must be one of: {tags}"
    elif kind == "string_pattern_mismatch":
        msg = "must be lower-case letters, digits and underscores, starting with a letter"
    else:
        msg = msg.removeprefix("Value error, ")
    if kind not in ("missing", "extra_forbidden") and not isinstance(err.get("input"), dict | list):
        msg += f" (got {err.get('input')!r})"
    return f"{where}{key}: {msg}"


def _members(annotation) -> list:
    """The pydantic models inside an annotation (through Annotated, list and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()):
        found += _members(arg)
    return found


def _tags(annotation) -> list[str]:
    return [
        m.model_fields["kind"].annotation.__args__[0]
        for m in _members(annotation)
        if "kind" in m.model_fields
    ]


def _resolve(loc: list) -> tuple[list, Any]:
    """Follow a pydantic error location down the Config annotations.

    Returns the location without the union tags pydantic inserts (model.weighted.signals →
    model.signals) and the annotation found there (None when the path leaves the schema).
    """
    kept: list = []
    annotation: Any = Config
    for part in loc:
        if isinstance(part, int):
            kept.append(part)
            continue
        concrete = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        members = _members(annotation)
        tagged = [m for m in members if part in _tags(m)]
        if tagged and not (concrete and part in annotation.model_fields):
            annotation = tagged[0]
            continue
        kept.append(part)
        model = annotation if concrete else (members[0] if len(members) == 1 else None)
        if model is None or part not in model.model_fields:
            return kept, None
        annotation = model.model_fields[part].annotation
    return kept, annotation


def _walk_annotation(loc: list):
    return _resolve(loc)[1]


def _walk(loc: list) -> type[BaseModel] | None:
    members = _members(_walk_annotation(loc))
    return members[0] if len(members) == 1 else None


def _strip_tags(loc: list) -> list:
    return _resolve(loc)[0]
