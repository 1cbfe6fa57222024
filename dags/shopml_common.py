"""Definitions every shopml DAG shares (listed in .airflowignore: not a DAG file itself)."""

from __future__ import annotations

import functools
import os
from datetime import timedelta

from airflow.sdk import Asset

from pipeline import families
from pipeline.core.settings import apply_process_defaults

# Every task process imports this module (the DAG files do) before a task imports mlflow.
apply_process_defaults()

# Updated by ingest_events after each published day; training DAGs are scheduled on it.
CANONICAL_DATASET = Asset("shopml://dataset/canonical")


def retrain_request(model: str) -> Asset:
    """Updated by ``monitor_models`` when evidence (drift, online quality) asks for a retrain of
    ``model``; its retrain DAG is scheduled on it (and weekly at the latest)."""
    return Asset(f"shopml://retrain/{model}")


# The model families, one retrain DAG each (the table is standard library only: cheap at parse time).
MODELS = families.names()

# The pool every training task takes a slot of: one slot per GPU, so two trainings never share one.
# `python -m pipeline airflow` creates it (one slot) with a new metadata database.
TRAIN_POOL = os.environ.get("SHOPML_TRAIN_POOL", "shopml_training")


def newest_event_extra(context, key: str):
    """``key`` of the extra of the newest triggering Asset event that carries it, or None for a run
    the schedule or a person started (``ingest_events`` sets ``version``; ``monitor_models``
    ``version`` and ``reason``)."""
    events = context.get("triggering_asset_events") or {}
    found = [e for asset in events for e in events[asset] if (e.extra or {}).get(key)]
    return max(found, key=lambda e: e.timestamp).extra[key] if found else None


def fail_without_retry(func):
    """A task decorator: a missing run, model or policy rule, a refused registry change, a served
    model that answers unlike its evaluation, or data that cannot be evaluated (``BadInput``, e.g. a
    test period without a positive), will not change on a retry, so the task fails at once and says
    why."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.core.errors import BadInput
        from pipeline.core.tracking import RegistryError
        from pipeline.lifecycle.gate import PolicyError
        from pipeline.serving.package import ParityError

        try:
            return func(*args, **kwargs)
        except (RegistryError, PolicyError, ParityError, BadInput) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper


def timed(func):
    """A task decorator: the task log ends with the stage's own time (``stage <name> took <s> s``),
    so Airflow's overhead is the DAG's wall time minus these (``benchmarks/bench_airflow.py``)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        import time

        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            print(f"stage {func.__name__} took {time.perf_counter() - start:.2f} s")

    return wrapper


def report_failure(context) -> None:
    """Task failure callback: one clear summary in the log and a JSON file for whoever is on call.

    The file goes to ``$SHOPML_HOME/reports/failures/<dag>/<run>/<task>.json`` (stdlib only: this
    module is imported when DAG files are parsed).
    """
    import json
    import os
    import re
    from datetime import datetime, timezone
    from pathlib import Path

    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    run_id = context.get("run_id") or getattr(ti, "run_id", "unknown")
    summary = {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": run_id,
        "try_number": getattr(ti, "try_number", None),
        "error": f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    home = Path(os.environ.get("SHOPML_HOME") or Path.cwd() / ".state")
    out = home / "reports" / "failures" / ti.dag_id / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id) / f"{ti.task_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(
        f"FAILED {ti.dag_id}.{ti.task_id} (run {run_id}, try {summary['try_number']}): "
        f"{summary['error'].splitlines()[0]} -- summary in {out}"
    )


DEFAULT_ARGS = {
    "owner": "shopml",
    # The Celery queue of every shopml task (training has its own, SHOPML_TRAIN_QUEUE): on an Airflow
    # shared with other teams, shopml's tasks go to shopml's workers.
    "queue": os.environ.get("SHOPML_QUEUE", "default"),
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
    "on_failure_callback": report_failure,
}
