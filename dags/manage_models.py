"""
### promote_model / rollback_model

Two manually triggered DAGs that change which model version serves, recorded with who and why
(the registered model's `champion_history.NNNNNN` tags in MLflow, one per change).

- **promote_model**: `champion` moves to `version` (empty: the current `challenger`). A version the
  gate rejected is refused unless `force` is set; the override is recorded.
- **rollback_model**: `champion` moves back to the version that was champion before the current one.

Trigger from the UI ("Trigger DAG w/ config") or the CLI:

    airflow dags trigger rollback_model --conf '{"model": "next_item", "reason": "conversion dropped"}'

A refused change (no previous champion, a rejected version) fails at once, without retries: retrying
cannot make it valid.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, task
from shopml_common import DEFAULT_ARGS, MODELS, fail_without_retry

COMMON = {
    "tags": ["shopml", "registry"],
    "schedule": None,
    "catchup": False,
    "start_date": datetime(2026, 11, 1, tzinfo=timezone.utc),
    "max_active_runs": 1,
    "default_args": DEFAULT_ARGS,
    "doc_md": __doc__,
}


def _who(context) -> str:
    """The person who triggered the run where Airflow knows it, else 'airflow'."""
    run = context.get("dag_run")
    return getattr(run, "triggering_user_name", None) or "airflow"


@dag(
    dag_id="promote_model",
    params={
        "model": Param("next_item", enum=list(MODELS)),
        "version": Param(None, type=["null", "string", "integer"], description="empty: the current challenger"),
        "reason": Param("", type="string", minLength=1, description="why, recorded in the registry"),
        "force": Param(False, type="boolean", description="promote a version the gate rejected"),
    },
    **COMMON,
)
def promote_model_dag():
    @task
    @fail_without_retry
    def promote(params=None, **context) -> str:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle.registry import promote

        version = None if params["version"] in (None, "") else str(params["version"])
        mv = promote(
            get_state_paths(),
            params["model"],
            version,
            by=_who(context),
            reason=params["reason"],
            force=bool(params["force"]),
        )
        print(f"{params['model']}: champion is now version {mv.version} ({params['reason']})")
        return str(mv.version)

    promote()


@dag(
    dag_id="rollback_model",
    params={
        "model": Param("next_item", enum=list(MODELS)),
        "reason": Param("", type="string", minLength=1, description="why, recorded in the registry"),
    },
    **COMMON,
)
def rollback_model_dag():
    @task
    @fail_without_retry
    def rollback(params=None, **context) -> str:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle.registry import rollback

        mv = rollback(get_state_paths(), params["model"], by=_who(context), reason=params["reason"])
        print(f"{params['model']}: champion is back to version {mv.version} ({params['reason']})")
        return str(mv.version)

    rollback()


promote_model_dag()
rollback_model_dag()
