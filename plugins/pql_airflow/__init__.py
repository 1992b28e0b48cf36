"""Airflow-facing adapters: hooks that turn connections into vendor clients, and shared Assets."""
