"""The feature job on Spark: the lake's events (and profiles) as views, one SQL query, a frame.

Self-contained on purpose (pyspark and the standard library only): `spark-submit` ships this file
alone to a cluster, where pql is not installed. The query is built by pql.scoring.features (Spark
dialect) on the side that submits, and passed compressed and base64-encoded (`encode`) so that no
shell, YARN launch script or Kubernetes manifest on the way can mangle its quotes and newlines.
pql.features_spark imports `load_views` and `run` from here for an in-process session, so both
paths read the lake the same way.

    spark-submit spark_job.py --events 'lake/events/source=*/date=*/*.parquet' \
        [--profiles 'lake/identity/*/profiles.parquet'] --sql ... --out lake/features/as_of=...
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import zlib

EVENTS, PROFILES = "pql_events", "pql_profiles"  # the views the query reads


def load_views(spark, events: str, profiles: str | None = None) -> None:
    """Register the canonical events (and profiles) of the lake as temporary views.

    Globs are read as plain files (no partition discovery: `source` is a column of the files and
    a folder name); schemas are merged by name, as DuckDB's union_by_name does.
    """
    _quiet_glob_warning(spark)
    reader = spark.read.option("recursiveFileLookup", "true").option("mergeSchema", "true")
    reader.parquet(events).createOrReplaceTempView(EVENTS)
    if profiles:
        reader.parquet(profiles).createOrReplaceTempView(PROFILES)


def _quiet_glob_warning(spark) -> None:
    """Spark looks for a streaming sink's metadata folder at a glob path and, finding none (there
    never is one), logs a warning with a Java stack trace on every read: silence that logger only
    (a cosmetic setting: skipped where the JVM is not reachable, as with Spark Connect)."""
    with contextlib.suppress(Exception):
        jvm = spark.sparkContext._jvm
        for name in ("sinks.FileStreamSink", "FileStreamSink"):  # Spark 4, Spark 3
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
                f"org.apache.spark.sql.execution.streaming.{name}",
                jvm.org.apache.logging.log4j.Level.ERROR,
            )


def run(spark, sql: str, events: str, profiles: str | None = None):
    """The query's DataFrame over the lake, in UTC like the DuckDB path."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    load_views(spark, events, profiles)
    return spark.sql(sql)


def encode(sql: str) -> str:
    """The query as one safe command-line word: zlib, then URL-safe base64 (~1/6 the size)."""
    return base64.urlsafe_b64encode(zlib.compress(sql.encode(), 9)).decode()


def decode(word: str) -> str:
    return zlib.decompress(base64.urlsafe_b64decode(word.encode())).decode()


def main(argv: list[str] | None = None) -> None:
    from pyspark.sql import SparkSession

    parser = argparse.ArgumentParser(description="pql point-in-time features on Spark")
    parser.add_argument("--events", required=True, help="Parquet glob of canonical events")
    parser.add_argument("--profiles", default="", help="Parquet glob of user profiles")
    parser.add_argument("--sql", required=True, help="the query (pql.scoring.features), encoded")
    parser.add_argument("--out", required=True, help="folder for the frame (Parquet)")
    args = parser.parse_args(argv)
    sql = decode(args.sql)
    spark = SparkSession.builder.appName("pql-features").getOrCreate()
    frame = run(spark, sql, args.events, args.profiles or None)
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # not INT96
    frame.write.mode("overwrite").parquet(args.out)  # a _SUCCESS file marks it complete


if __name__ == "__main__":
    main()
