"""Definitions every shopml DAG shares (listed in .airflowignore: not a DAG file itself)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset

# Updated by ingest_events after each published day; training DAGs are scheduled on it.
CANONICAL_DATASET = Asset("shopml://dataset/canonical")

DEFAULT_ARGS = {
    "owner": "shopml",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
}
