"""
### collect_garbage

Weekly: `python -m pipeline gc`'s plan and removal. It keeps every dataset version, Bento and model
a registered version or a pinned run (`shopml.pinned` = `true`) refers to, the current dataset
version and whatever was made in the last `keep_days` days (30 unless the run's config says
otherwise), and removes the rest from the DVC cache and remote, the dataset snapshots, the Bento
store, the prediction log and the reports. The task log lists each thing kept (and why) and each
thing removed. Trigger it with `{"dry_run": true}` to see the plan without removing anything.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import Param, dag, task
from shopml_common import DEFAULT_ARGS, timed


@dag(
    dag_id="collect_garbage",
    schedule="@weekly",
    catchup=False,
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["shopml", "retention"],
    doc_md=__doc__,
    params={
        "keep_days": Param(30, type="integer", minimum=1, description="keep what was made in the last N days"),
        "dry_run": Param(False, type="boolean", description="list what would be removed; remove nothing"),
    },
)
def collect_garbage():
    @task(task_id="gc")
    @timed
    def gc_task(**context) -> dict:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import gc

        params = context["params"]
        paths = get_state_paths()
        todo = gc.plan(paths, keep_days=int(params["keep_days"]))
        for line in todo.lines():
            print(line)
        if not params["dry_run"]:
            gc.collect(paths, todo)
        return {"removed_versions": todo.remove_versions, "removed_bentos": todo.remove_bentos}

    gc_task()


collect_garbage()
