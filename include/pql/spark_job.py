"""The feature job on Spark: the lake's events (and profiles) as views, one SQL query, a frame.

Self-contained on purpose (pyspark and the standard library only): `spark-submit` ships this file
alone to a cluster, where pql is not installed. The query itself is built by pql.features (Spark
dialect) on the side that submits, and passed base64-encoded so that no shell, YARN launch script
or Kubernetes manifest on the way can mangle its quotes and newlines. pql.features_spark imports
`load_views` and `run` from here for an in-process session, so both paths read the lake the same
way.

    spark-submit spark_job.py --events 'lake/events/source=*/date=*/*.parquet' \
        [--profiles 'lake/identity/*/profiles.parquet'] --sql-b64 ... --out lake/features/as_of=...
"""

from __future__ import annotations

import argparse
import base64

EVENTS, PROFILES = "pql_events", "pql_profiles"  # the views the query reads


def load_views(spark, events: str, profiles: str | None = None) -> None:
    """Register the canonical events (and profiles) of the lake as temporary views.

    Globs are read as plain files (no partition discovery: `source` is a column of the files and
    a folder name); schemas are merged by name, as DuckDB's union_by_name does.
    """
    reader = spark.read.option("recursiveFileLookup", "true").option("mergeSchema", "true")
    reader.parquet(events).createOrReplaceTempView(EVENTS)
    if profiles:
        reader.parquet(profiles).createOrReplaceTempView(PROFILES)


def run(spark, sql: str, events: str, profiles: str | None = None):
    """The query's DataFrame over the lake, in UTC like the DuckDB path."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    load_views(spark, events, profiles)
    return spark.sql(sql)


def encode(sql: str) -> str:
    return base64.urlsafe_b64encode(sql.encode()).decode()


def main(argv: list[str] | None = None) -> None:
    from pyspark.sql import SparkSession

    parser = argparse.ArgumentParser(description="pql point-in-time features on Spark")
    parser.add_argument("--events", required=True, help="Parquet glob of canonical events")
    parser.add_argument("--profiles", default="", help="Parquet glob of user profiles")
    parser.add_argument("--sql-b64", required=True, help="the query (pql.features, Spark)")
    parser.add_argument("--out", required=True, help="folder for the frame (Parquet)")
    args = parser.parse_args(argv)
    sql = base64.urlsafe_b64decode(args.sql_b64.encode()).decode()
    spark = SparkSession.builder.appName("pql-features").getOrCreate()
    frame = run(spark, sql, args.events, args.profiles or None)
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # not INT96
    frame.write.mode("overwrite").parquet(args.out)  # a _SUCCESS file marks it complete


if __name__ == "__main__":
    main()
