"""The point-in-time features on Spark (`features.engine: spark`): the DuckDB query, in Spark SQL.

Nothing about the catalogue lives here: pql.scoring.features builds the one query in Spark SQL
and gives the frame's schema; this module only runs it, two ways:

- in this process (`features.spark.master`, `local[*]` by default): a SparkSession (one per
  process, a fresh SQL session per call), the result collected through Arrow;
- on a cluster (`features.spark.submit: true`, the score DAG): a `SparkJob` (spark_job.py with
  the query as its arguments) handed to a `submit` callable, in Airflow the Spark provider's
  SparkSubmitHook (pql_airflow.spark); the job writes the frame under
  `<lake>/features/as_of=.../` and it is read back from there.

pyspark is imported only when a session is needed (it is heavy, and not needed to submit).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pql.config import Config, Features, WeightedModel
from pql.lake import Lake
from pql.scoring import spark_job
from pql.scoring.features import (
    SPARK,
    When,
    aggregates,
    as_utc,
    feature_sql,
    output_schema,
    to_frame,
)

# In-process sessions on a local master: loopback only, no web UI or progress bars in task logs.
LOCAL_DEFAULTS = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


@dataclass(frozen=True)
class SparkJob:
    """What to spark-submit: the application file, its arguments, settings and where it writes."""

    application: str
    args: list[str]
    name: str
    out: Path  # the frame's folder as this process sees it
    conf: dict[str, str] = field(default_factory=dict)


@contextmanager
def _no_pandas_warning():
    """pyspark warns on import that it does not fully support pandas 3: results come back as
    Arrow here and pandas is never used on Spark's side."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas")
        yield


def session(options: Features.Spark | None = None):
    """The process's SparkSession (created with `options` the first time)."""
    from pyspark.sql import SparkSession

    # py4j logs its connection closing from __del__, after logging has shut down at exit.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    options = options or Features.Spark()
    local = options.master.startswith("local")
    if local:  # the JVM's own address lookup, before any setting is read
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName("pql-features").master(options.master)
    for key, value in {**(LOCAL_DEFAULTS if local else {}), **options.conf}.items():
        builder = builder.config(key, value)
    with _no_pandas_warning():
        return builder.getOrCreate()


def user_features(
    events_glob: str,
    as_of: When,
    features: Features,
    free_email_domains: list[str],
    *,
    profiles: str | None = None,
    model: WeightedModel | None = None,
    users: Sequence[str] | None = None,
    spark=None,
) -> pd.DataFrame:
    """features.user_features on Spark: the same rows, columns and types (`users` and pairs
    of `as_of` are written into the query).

    `spark`: a SparkSession to use (default: `session(features.spark)`); each call runs in its
    own SQL session of it, so its views and settings do not leak.
    """
    pairs = isinstance(as_of, pd.DataFrame)
    columns = aggregates(features, as_of, model, SPARK)
    schema = output_schema(columns, pairs)
    if (pairs and as_of.empty) or (users is not None and not len(users)):
        return to_frame(schema.empty_table(), schema)
    prof = spark_job.PROFILES if profiles else None
    free = free_email_domains
    sql = feature_sql(SPARK, spark_job.EVENTS, as_of, columns, free, prof, users=users)
    sql_session = (spark or session(features.spark)).newSession()
    with _no_pandas_warning():
        table = spark_job.run(sql_session, sql, events_glob, profiles).toArrow()
    return to_frame(table, schema)


def lake_uri(root: Path, options: Features.Spark):
    """Local lake paths → the URIs Spark reads (`lake_uri` when the cluster mounts it elsewhere)."""
    base = options.lake_uri.rstrip("/") if options.lake_uri else f"file://{root.resolve()}"

    def uri(path: Path | str) -> str:
        return base + "/" + Path(path).resolve().relative_to(root.resolve()).as_posix()

    return uri


def job(
    cfg: Config,
    lake: Lake,
    as_of: datetime,
    *,
    profiles: bool,
    users: Sequence[str] | None = None,
) -> SparkJob:
    """The spark-submit of the feature frame as of `as_of` for this lake and config (of only
    `users`, if given: then in a folder of its own)."""
    options = cfg.features.spark
    columns = aggregates(cfg.features, as_of, cfg.model, SPARK)
    prof = spark_job.PROFILES if profiles else None
    free = cfg.identity.free_email_domains
    sql = feature_sql(SPARK, spark_job.EVENTS, as_of, columns, free, prof, users=users)
    stamp = f"{as_utc(as_of):%Y%m%dT%H%M%SZ}"
    if users is not None:
        stamp += "-users-" + hashlib.sha256("\n".join(sorted(users)).encode()).hexdigest()[:12]
    out = lake.root / "features" / f"as_of={stamp}"
    uri = lake_uri(lake.root, options)
    args = ["--events", uri(lake.events_glob()), "--out", uri(out)]
    if profiles:
        args += ["--profiles", uri(lake.root / "identity" / "*" / "profiles.parquet")]
    args += ["--sql", spark_job.encode(sql)]
    return SparkJob(
        application=str(Path(spark_job.__file__).resolve()),
        args=args,
        name=f"pql-features-{stamp}",
        out=out,
        conf={"spark.sql.session.timeZone": "UTC", **options.conf},
    )


def read_output(out: Path, features: Features, as_of: datetime, model) -> pd.DataFrame:
    """The frame a submitted job wrote (only once Spark marked it complete)."""
    if not (out / "_SUCCESS").exists():
        raise FileNotFoundError(f"the Spark feature job did not complete {out} (no _SUCCESS)")
    table = pq.read_table(out).sort_by("user_key")
    return to_frame(table, output_schema(aggregates(features, as_of, model, SPARK)))


def lake_features(
    cfg: Config,
    lake: Lake,
    as_of: datetime,
    *,
    profiles: bool,
    submit=None,
    users: Sequence[str] | None = None,
):
    """The frame for this lake on Spark (of only `users`, if given): submitted through
    `submit(job)` when given (and `features.spark.submit`), else in this process on
    `features.spark.master`."""
    options = cfg.features.spark
    some = users is None or len(users) > 0  # no users: no job, the empty frame below
    if options.submit and submit is not None and some:
        spec = job(cfg, lake, as_of, profiles=profiles, users=users)
        submit(spec)
        return read_output(spec.out, cfg.features, as_of, cfg.model)
    uri = lake_uri(lake.root, options)
    prof = uri(lake.root / "identity" / "*" / "profiles.parquet") if profiles else None
    return user_features(
        uri(lake.events_glob()),
        as_of,
        cfg.features,
        cfg.identity.free_email_domains,
        profiles=prof,
        model=cfg.model,
        users=users,
    )
