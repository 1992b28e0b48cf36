"""The Spark feature job as the score task submits it: the provider's spark-submit command."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pql import config
from pql.lake import Lake
from pql.scoring import features_spark, spark_job

ROOT = Path(__file__).resolve().parents[2]


def test_score_task_submits_the_feature_job_through_the_spark_connection(tmp_path, monkeypatch):
    from pql_airflow.spark import submit_hook

    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_PQL_TEST",
        json.dumps(
            {
                "conn_type": "spark",
                "host": "yarn",
                "extra": {"deploy-mode": "cluster", "queue": "etl"},
            }
        ),
    )
    cfg = config.load(ROOT / "config" / "pql.yaml")
    spark = config.Features.Spark(
        submit=True,
        connection_id="spark_pql_test",
        conf={"spark.executor.memory": "4g"},
        lake_uri="hdfs://nn/pql/lake",
    )
    cfg = cfg.model_copy(
        update={
            "lake": config.LakeSettings(root=tmp_path),
            "features": cfg.features.model_copy(update={"engine": "spark", "spark": spark}),
        }
    )
    job = features_spark.job(cfg, Lake(tmp_path), datetime(2026, 10, 6, tzinfo=UTC), profiles=True)
    cmd = submit_hook(job, spark.connection_id)._build_spark_submit_command(job.application)
    assert cmd[:3] == ["spark-submit", "--master", "yarn"]
    assert cmd[3:7] == [
        "--conf",
        "spark.sql.session.timeZone=UTC",
        "--conf",
        "spark.executor.memory=4g",
    ]
    assert cmd[cmd.index("--name") :][:2] == ["--name", "pql-features-20261006T000000Z"]
    assert cmd[cmd.index("--queue") :][:4] == ["--queue", "etl", "--deploy-mode", "cluster"]
    app = cmd.index(job.application)
    assert (
        job.application.endswith("include/pql/scoring/spark_job.py") and cmd[app + 1 :] == job.args
    )
    args = dict(zip(job.args[::2], job.args[1::2], strict=True))
    assert args["--events"] == "hdfs://nn/pql/lake/events/source=*/date=*/*.parquet"
    assert args["--profiles"] == "hdfs://nn/pql/lake/identity/*/profiles.parquet"
    assert args["--out"] == "hdfs://nn/pql/lake/features/as_of=20261006T000000Z"
    assert len(args["--sql"]) < 4000  # one short word, whatever the catalogue's size
    sql = spark_job.decode(args["--sql"])
    assert "FROM pql_events" in sql and "get_json_object" in sql and "`core_feature_used_7d`" in sql
