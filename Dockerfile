# The Airflow image with this project installed (used by docker-compose.yaml for every component:
# api-server, scheduler, dag-processor, triggerer, Celery workers and the init service).
FROM apache/airflow:3.3.2-python3.11
# Mount points of the compose volumes, owned by the airflow user (uid 50000) so that a new named
# volume starts writable: the lake and the simple auth manager's passwords file.
USER root
RUN mkdir -p /data/lake /opt/airflow/auth \
    && chown airflow:root /data/lake /opt/airflow/auth \
    && chmod 0770 /opt/airflow/auth
# Java for features.engine: spark (pyspark's local session and spark-submit find it on PATH).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
USER airflow
# The production lock only (every package pinned, with hashes: pip checks them); the test and
# sandbox tools of requirements-dev.txt never enter the image.
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/pql/
RUN pip install --no-cache-dir -r /opt/pql/requirements.txt
COPY --chown=airflow:root . /opt/pql
RUN pip install --no-cache-dir --no-deps -e /opt/pql
