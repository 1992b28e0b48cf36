"""Assets that link the DAGs: extract DAGs update the canonical events; scoring runs on them."""

from airflow.sdk import Asset

CANONICAL_EVENTS = Asset(name="pql_canonical_events", uri="file:///pql/lake/events")
SCORES = Asset(name="pql_scores", uri="file:///pql/lake/scores")
