"""DuckDB and Spark compute the same point-in-time features over the same lake.

One local Spark session for the module (JVM start-up dominates: keep Spark queries few). The
lake is a small synthetic world plus a hand-made partition of the cases where engines tend to
differ: ID merges, ties on time, JSON values that are not strings, quotes and backslashes in
event names, window and day boundaries, profiles from two sources.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pql import config
from pql.enrich import firmographics
from pql.events.canonical import SCHEMA
from pql.lake import Lake, atomic_dir
from pql.scoring import features, features_spark, snapshots, spark_job
from sandbox import lakegen, world

pytest.importorskip("pyspark")
if not shutil.which("java"):
    pytest.skip("Spark needs Java (java not on the PATH)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[3]
SPEC = world.WorldSpec(seed=11, start=date(2026, 3, 2), days=35, users=250, accounts=60)
ODD = "User's \\ Report"  # a tracked event whose name needs escaping in both dialects
AS_OF = [datetime(2026, 3, 25, tzinfo=UTC), SPEC.end]
T = datetime(2026, 3, 24, 12, tzinfo=UTC)  # the hand-made events sit around this moment
# Small and quick: two cores, two shuffle partitions, no UI, a JIT tuned for short runs.
TEST_SPARK = config.Features.Spark(
    master="local[2]",
    conf={
        "spark.sql.shuffle.partitions": 2,
        "spark.default.parallelism": 2,
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    },
)
MODEL = config.WeightedModel.model_validate(
    {
        "kind": "weighted",
        "version": "parity",
        "threshold": 50,
        "signals": [
            {"kind": "event", "event": "Core Feature Used", "window_days": 14, "points_each": 1,
             "half_life_days": 3.5},
            {"kind": "event", "event": ODD, "window_days": 7, "points_each": 5},
            {"kind": "active_days", "window_days": 7, "points_each": 2},
            {"kind": "free_email", "points": -10},
        ],
    }
)  # fmt: skip


def _features() -> config.Features:
    base = config.load(ROOT / "config" / "pql.yaml").features
    return base.model_copy(
        update={
            "events": [*base.events, ODD],
            "distinct": [
                *base.distinct,
                config.DistinctFeature(name="tier", event="Odd Thing", property="v"),
            ],
        }
    )


def _row(user, name, ts, source="crafted", **kw):
    return {
        "source": source,
        "event_id": f"{user}-{name}-{ts.isoformat()}-{kw.get('properties', '')}",
        "event_name": name,
        "user_key": user,
        "device_id": kw.get("device_id"),
        "email": kw.get("email"),
        "account_key": kw.get("account_key"),
        "ts": ts,
        "received_at": ts,
        "properties": kw.get("properties", "{}"),
    }


def _crafted() -> list[dict]:
    h = timedelta(hours=1)
    rows = [
        # An anonymous visit, then the identify: the device becomes x1's (first seen earlier).
        _row("$device:d1", "Pricing Page Viewed", T - 30 * h, device_id="d1"),
        _row("x1", "Signed Up", T - 2 * h, device_id="d1", email="x1@acme.io"),
        # Never identified: not a user.
        _row("$device:d9", "Pricing Page Viewed", T - 3 * h, device_id="d9"),
        # One device identified as two users at the same moment: the tie goes to the larger key.
        _row("$device:d2", ODD, T - 5 * h, device_id="d2"),
        _row("x2", "Signed Up", T - 4 * h, device_id="d2", email="x2@gmail.com"),
        _row("x3", "Signed Up", T - 4 * h, device_id="d2", email="noat"),
        # Two emails, two group keys, two plans at the same moment; the source ties too.
        _row(
            "x4",
            "Signed Up",
            T - 6 * h,
            "amplitude",
            email="b@beta.dev",
            account_key="g1",
            properties='{"plan": "pro"}',
        ),
        _row(
            "x4",
            "Signed Up",
            T - 6 * h,
            email="a@alpha.dev",
            account_key="g2",
            properties='{"plan": "team"}',
        ),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"plan": null, "v": 5}'),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"v": 5.0}'),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"v": "5"}'),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"v": {"k": [1, "\\u00e9"]}}'),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"v": "\\u00e9t\\u00e9"}'),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"v": true}'),
        _row("x4", "Odd Thing", T - 1 * h, properties='{"w": 1}'),
        _row("x4", ODD, T - 1 * h),
        # No email on any event: the profiles give it (two sources, two answers: the smaller).
        _row("x5", "Core Feature Used", T - 1 * h),
        # Window and day edges: exactly 7 days before the first as_of (in), one microsecond
        # earlier (out), the last microsecond of a day and the first of the next.
        _row("x6", "Core Feature Used", AS_OF[0] - timedelta(days=7)),
        _row("x6", "Core Feature Used", AS_OF[0] - timedelta(days=7, microseconds=1)),
        _row("x6", ODD, datetime(2026, 3, 23, 23, 59, 59, 999999, tzinfo=UTC)),
        _row("x6", ODD, datetime(2026, 3, 24, tzinfo=UTC)),
        _row("x6", "Core Feature Used", AS_OF[0]),  # at the moment itself: not before it
    ]
    return rows


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("lake"))
    lakegen.write(SPEC, lake)
    rows = _crafted()
    for day in sorted({r["ts"].date() for r in rows}):
        with atomic_dir(lake.events("crafted", day)) as tmp:
            part = [r for r in rows if r["ts"].date() == day]
            pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), tmp / "part-0.parquet")
    for source, email in (("mixpanel", "Zed@Five.io"), ("amplitude", "Five@Five.io")):
        (lake.root / "identity" / source).mkdir(parents=True)
        pq.write_table(
            pa.table({"user_key": ["x5", "x1"], "email": [email, "other@acme.io"]}),
            lake.root / "identity" / source / "profiles.parquet",
        )
    return lake


@pytest.fixture(scope="module")
def spark():
    session = features_spark.session(TEST_SPARK)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _same(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(spark.columns) == list(duck.columns)
    assert dict(spark.dtypes) == dict(duck.dtypes)
    assert list(spark["user_key"]) == list(duck["user_key"])
    pd.testing.assert_frame_equal(spark, duck, check_exact=False, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("as_of", AS_OF, ids=["mid", "end"])
def test_duckdb_and_spark_give_the_same_features(lake, spark, as_of):
    feats, free = _features(), ["gmail.com", "yahoo.com"]
    profiles = str(lake.root / "identity" / "*" / "profiles.parquet")
    args = (lake.events_glob(), as_of, feats, free)
    duck = features.user_features(*args, profiles=profiles, model=MODEL)
    on_spark = features_spark.user_features(*args, profiles=profiles, model=MODEL, spark=spark)
    _same(duck, on_spark)
    assert len(duck) > 100 and duck["core_feature_used_30d"].sum() > 100  # a real world
    f = duck.set_index("user_key")
    assert "x1" in f.index and not f.index.str.startswith("$device:").any()
    assert f.loc["x1", "first_seen"] == pd.Timestamp(T - timedelta(hours=30))  # merged device
    assert (f.loc["x4", "email"], f.loc["x4", "group_key"]) == ("b@beta.dev", "g2")
    assert (f.loc["x4", "event_plan"], f.loc["x4", "source"]) == ("team", "amplitude")
    assert f.loc["x5", "email"] == "five@five.io" and f.loc["x5", "account_key"] == "five.io"
    assert f.loc["x2", "free_email"] and pd.isna(f.loc["x2", "account_key"])
    assert f.loc["x3", "email_domain"] == ""
    if as_of == AS_OF[0]:
        assert f.loc["x3", "user_s_report_7d"] == 1 and f.loc["x2", "user_s_report_7d"] == 0
        assert f.loc["x4", "tier_7d"] == 5  # 5 and "5" (both the text 5), 5.0, {...}, été, true
        assert f.loc["x6", "core_feature_used_7d"] == 1 and f.loc["x6", "active_days_7d"] == 3
        assert 0 < f.loc["x5", "s0"] < 1 and f.loc["x5", "s0_n"] == 1  # decayed over 13 hours


def test_some_users_and_many_moments_are_the_same_on_both(lake, spark):
    """Only some users' rows (`users`), and theirs at many moments at once (pairs): the same
    rows as the whole frame, on both engines (ID merges and ties included)."""
    feats, free = _features(), ["gmail.com", "yahoo.com"]
    profiles = str(lake.root / "identity" / "*" / "profiles.parquet")
    users = ["x1", "x2", "x3", "x4", "x5", "x6", "nobody"]
    args = (lake.events_glob(), AS_OF[0], feats, free)
    whole = features.user_features(*args, profiles=profiles, model=MODEL)
    duck = features.user_features(*args, profiles=profiles, model=MODEL, users=users)
    expected = whole[whole["user_key"].isin(users)].reset_index(drop=True)
    _same(expected, duck)
    _same(duck, features_spark.user_features(*args, profiles=profiles, model=MODEL,
                                             users=users, spark=spark))  # fmt: skip
    moments = [T - timedelta(hours=h) for h in (31, 5, 3.5, 1.5, 0)] + [AS_OF[0]]
    pairs = pd.DataFrame([(u, m) for u in users for m in moments], columns=["user_key", "as_of"])
    args = (lake.events_glob(), pairs, feats, free)
    duck = features.user_features(*args, profiles=profiles, model=MODEL)
    on_spark = features_spark.user_features(*args, profiles=profiles, model=MODEL, spark=spark)
    _same(duck, on_spark)
    assert set(duck["user_key"]) == {"x1", "x2", "x3", "x4", "x5", "x6"}
    f = duck.set_index(["user_key", "as_of"])
    # Before the identify (T - 2 h), x1 is not a user yet; then the device's visit is theirs.
    assert ("x1", pd.Timestamp(T - timedelta(hours=3.5))) not in f.index
    assert f.loc[("x1", pd.Timestamp(T)), "first_seen"] == pd.Timestamp(T - timedelta(hours=30))


def test_submitted_job_writes_the_same_frame(lake, spark, monkeypatch):
    """The cluster path: snapshots.features_at builds the job, `submit` runs spark_job.main (here
    in this process's session, as spark-submit would on a cluster), the frame is read back."""
    base = config.load(ROOT / "config" / "pql.yaml")
    cfg = base.model_copy(update={"lake": config.LakeSettings(root=lake.root)})
    spark_cfg = cfg.model_copy(
        update={
            "features": cfg.features.model_copy(
                update={
                    "engine": "spark",
                    "spark": TEST_SPARK.model_copy(update={"submit": True}),
                }
            )
        }
    )
    submitted = []

    def submit(job: features_spark.SparkJob) -> None:
        submitted.append(job)
        assert job.application.endswith("spark_job.py") and Path(job.application).exists()
        assert job.conf["spark.sql.session.timeZone"] == "UTC"
        spark_job.main(job.args)

    accounts = firmographics.read(lake)
    as_of = AS_OF[1]
    duck = snapshots.features_at(cfg, lake, as_of, accounts)
    on_spark = snapshots.features_at(spark_cfg, lake, as_of, accounts, spark_submit=submit)
    assert len(submitted) == 1
    assert submitted[0].out == lake.root / "features" / "as_of=20260406T000000Z"
    assert "--profiles" in submitted[0].args and (submitted[0].out / "_SUCCESS").exists()
    _same(duck, on_spark)
    # Some users only: a job of their own, in a folder of its own.
    users = ["x1", "x4", duck["user_key"].iloc[0]]
    some = snapshots.features_at(spark_cfg, lake, as_of, accounts, spark_submit=submit, users=users)
    assert len(submitted) == 2 and submitted[1].out.name.startswith("as_of=20260406T000000Z-")
    _same(duck[duck["user_key"].isin(users)].reset_index(drop=True), some)
    _same(snapshots.features_at(cfg, lake, as_of, accounts, users=users), some)


def test_spark_settings_are_checked():
    with pytest.raises(ValueError, match="start with 'spark.'"):
        config.Features.model_validate({"spark": {"conf": {"executor.memory": "4g"}}})
    with pytest.raises(ValueError, match="engine"):
        config.Features.model_validate({"engine": "polars"})
    spark = config.Features.model_validate({"spark": {"conf": {"spark.x": 4, "spark.y": True}}})
    assert spark.spark.conf == {"spark.x": "4", "spark.y": "true"}
