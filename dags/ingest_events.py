"""
### ingest_events

Daily ingestion of the shop's raw events and catalog for one data interval:

1. **ingest_events**: read the interval's landing files (or any fsspec URI), coerce types,
   de-duplicate, stage one Parquet partition per day; unparseable rows go to quarantine with the
   file, row, column, value and reason.
2. **validate_batch**: run the Great Expectations suites of `expectations/` on the staged day.
   A failed critical expectation fails this task (no retry) with a one-line summary and the data
   docs path; nothing is published, and the previously accepted partition stays as it was.
3. **version_dataset**: publish the validated day into the canonical dataset, `dvc add` and
   `dvc push` it; the DVC hash is the dataset version, and the canonical dataset Asset is updated.

Params override `params.yaml`'s `ingest` section for one run (e.g. another adapter or source).
Wiring only: the work is done by plain functions in `pipeline/`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task
from shopml_common import CANONICAL_DATASET, DEFAULT_ARGS


def _interval(context):
    """The run's data interval as the pipeline's Interval (imported here: nothing heavy at parse time)."""
    from pipeline.data.ingest import Interval

    return Interval(context["data_interval_start"], context["data_interval_end"])


@dag(
    dag_id="ingest_events",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["shopml", "data"],
    params={
        "adapter": Param(None, type=["null", "string"], description="source layout; params.yaml when empty"),
        "events_source": Param(None, type=["null", "string"], description="events URI; {date} is the day"),
        "catalog_source": Param(None, type=["null", "string"], description="catalog URI (canonical layout)"),
    },
)
def ingest_events_dag():
    @task
    def ingest_events(params=None, **context) -> dict:
        from pipeline.core.params import load_params
        from pipeline.core.settings import get_state_paths
        from pipeline.data.ingest import ingest_events

        defaults = load_params().ingest
        result = ingest_events(
            _interval(context),
            events_source=params.get("events_source") or defaults.events_source,
            paths=get_state_paths(),
            adapter_name=params.get("adapter") or defaults.adapter,
            catalog_source=params.get("catalog_source") or defaults.catalog_source,
        )
        print(result.summary())
        return {
            "staged_days": result.staged_days,
            "rows_accepted": result.rows_accepted,
            "rows_quarantined": result.rows_quarantined,
        }

    @task
    def validate_batch(staged: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.core.params import load_params
        from pipeline.core.settings import get_state_paths
        from pipeline.data.validate import ValidationFailed, validate_batch

        try:
            outcome = validate_batch(_interval(context), get_state_paths(), load_params().validate)
        except ValidationFailed as exc:
            # Bad data does not get better on retry: fail at once, with the summary as the reason.
            raise AirflowFailException(str(exc)) from exc
        print(outcome.summary)
        return {"day": outcome.day, "warnings": len(outcome.warnings), "data_docs": outcome.data_docs}

    @task(outlets=[CANONICAL_DATASET])
    def version_dataset(validated: dict, **context) -> dict:
        from pipeline.core.settings import get_state_paths
        from pipeline.data.version import version_dataset

        version = version_dataset(_interval(context), get_state_paths())
        context["outlet_events"][CANONICAL_DATASET].extra = {"version": version.version}
        print(f"dataset version {version.version} ({version.files} files) at {version.path}")
        return version.to_dict()

    version_dataset(validate_batch(ingest_events()))


ingest_events_dag()
