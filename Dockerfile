# The Airflow image with this project installed (used by docker-compose.yaml).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/pql/
RUN pip install --no-cache-dir -r /opt/pql/requirements.txt
COPY --chown=airflow:root . /opt/pql
RUN pip install --no-cache-dir --no-deps -e /opt/pql
