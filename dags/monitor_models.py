"""
### monitor_models

Runs when `ingest_events` publishes a new dataset version (the Asset `shopml://dataset/canonical`).
For each model it judges the newest day whose following events are in (the last published day
less the model's `horizon_hours`), with `python -m pipeline monitor`'s functions:

`monitor_<model> -> request_retrain_<model>`

- **monitor**: the champion's served answers of that day (the prediction log) joined with what the
  users did next: hit rate and NDCG, or AUC and calibration, per served version; the drift of its
  input features against its training period and of its served scores; the skew between the
  snapshot it served from and the same features recomputed offline. One line per report in the
  task log, one MLflow run per day (experiment `monitoring-<model>`, an HTML report attached), the
  figures on the served model versions;
- **request_retrain**: when drift or online quality crosses `policy.yaml`'s `monitoring` thresholds
  (or there is no champion yet), and no request was made within the cool-down, it updates the Asset
  `shopml://retrain/<model>` with the reason, which starts `retrain_<model>`; otherwise it is
  **skipped**, with the reason (or the cool-down that holds it back) in the log.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task
from shopml_common import CANONICAL_DATASET, DEFAULT_ARGS, MODELS, newest_event_extra, retrain_request, timed


def _monitored_day(paths, model: str, version: str | None) -> tuple[str, str]:
    """(day, dataset version): the newest day with ``horizon_hours`` of events after it."""
    from pipeline.data.version import resolve_dataset_version
    from pipeline.lifecycle.monitor import load_monitoring_policy

    resolved = resolve_dataset_version(paths, version)
    last = max(datetime.fromisoformat(d).date() for d in resolved.published_days)
    back = math.ceil(load_monitoring_policy(model).horizon_hours / 24)
    return (last - timedelta(days=back)).isoformat(), resolved.version


def _chain(model: str) -> None:
    @task(task_id=f"monitor_{model}")
    @timed
    def monitor(**context) -> dict:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import monitor as monitoring

        paths = get_state_paths()
        day, version = _monitored_day(paths, model, newest_event_extra(context, "version"))
        policy = monitoring.load_monitoring_policy(model)
        try:
            result = monitoring.monitor(paths, model, day, version, policy)
        except monitoring.MonitoringError as exc:  # no champion yet: training is what is needed
            print(f"monitor {model} {day}: {exc}")
            return {
                "day": day,
                "dataset_version": version,
                "reasons": monitoring.retrain_reasons(None, policy, no_champion=True),
            }
        for line in result.lines(policy):
            print(line)
        return {
            "day": day,
            "dataset_version": version,
            "run_id": result.run_id,
            "reasons": monitoring.retrain_reasons(result, policy),
            "unweighed": monitoring.unweighed(result, policy),
        }

    @task(task_id=f"request_retrain_{model}", outlets=[retrain_request(model)])
    @timed
    def request_retrain(monitored: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import monitor as monitoring

        decision = monitoring.retrain_decision(
            get_state_paths(),
            model,
            monitored["day"],
            monitored["reasons"],
            monitoring.load_monitoring_policy(model),
            monitored["dataset_version"],
            monitored.get("unweighed", ""),
        )
        print(decision.line())
        if not decision.requested:  # a skipped task updates no Asset: retrain_<model> is not started
            raise AirflowSkipException(decision.line())
        context["outlet_events"][retrain_request(model)].extra = {
            "reason": "; ".join(decision.reasons),
            "day": monitored["day"],
            "version": monitored["dataset_version"],
        }
        return {"requested": True, "reason": "; ".join(decision.reasons)}

    request_retrain(monitor())


@dag(
    dag_id="monitor_models",
    schedule=[CANONICAL_DATASET],
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "execution_timeout": timedelta(minutes=30)},
    doc_md=__doc__,
    tags=["shopml", "monitoring"],
)
def monitor_models():
    for model in MODELS:
        _chain(model)


MONITOR_DAG = monitor_models()
