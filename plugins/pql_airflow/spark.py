"""The feature job on a Spark cluster through the Airflow Spark provider (`spark_default`).

`features.engine: spark` with `features.spark.submit: true`: the score task hands
pql.features_spark a `submit(job)` built here, which runs spark-submit with the provider's
SparkSubmitHook. The connection says where: host = master (`yarn`, `spark://host:7077`,
`k8s://https://host:443`, `local[*]`), extras `deploy-mode`, `queue`, `namespace`,
`spark-binary`. The `spark-submit` launcher (installed with pyspark) and Java must be on the
worker's PATH.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from pql.scoring.features_spark import SparkJob


def submit_hook(job: SparkJob, conn_id: str = "spark_default") -> SparkSubmitHook:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    return SparkSubmitHook(conn_id=conn_id, conf=job.conf, name=job.name, application_args=job.args)


def submitter(conn_id: str = "spark_default") -> Callable[[SparkJob], None]:
    """A `submit(job)` that runs spark-submit and returns when the job succeeded (or raises)."""

    def submit(job: SparkJob) -> None:
        submit_hook(job, conn_id).submit(job.application)

    return submit
