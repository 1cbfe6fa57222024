"""
### retrain_next_item / retrain_purchase_propensity

One DAG per model. Each retrains its model when `monitor_models` finds evidence that it should
(the Asset `shopml://retrain/<model>`: input drift or online quality past `policy.yaml`'s
`monitoring` thresholds, at most once per cool-down; the reason is on the Asset event and becomes
the training run's tag `shopml.retrain_reason`), and at the latest every Monday at 03:00 UTC (a
weekly upper bound, so a model is re-evaluated on fresh data even when nothing crossed a
threshold). Not on every dataset version: a day like the others retrains nothing. One run at a
time per model; the two models never wait for each other:

`features -> train -> evaluate -> gate -> register -> package -> promote`

- **features**: the model's feature set on the run's dataset version (time-based split, then
  SASRec's sequences or the propensity rows), written once under `$SHOPML_HOME/features/` and
  reused by a rerun; the log names the folder and the dataset version. The run's dataset version
  is the one the triggering Asset event carries (`ingest_events` publishes it), or for a weekly or
  manual run the current one, fixed in `$SHOPML_HOME/runs/` the first time the task runs, so a
  cleared and rerun DAG run trains, evaluates and packages on the data it first saw;
- **train**: on that feature set; one MLflow run (params,
  per-epoch metrics, dataset version, git commit, split, environment, the model as a pyfunc, the
  baselines' test metrics);
- **evaluate**: the candidate, the current `champion` and the baselines on the same frozen test
  rows (the run's own dataset version, cut at the run's own split points), with metrics per
  slice and plots, logged to the candidate's run under `evaluation/`;
- **gate**: the rules of `policy.yaml` (floors cleared with a bootstrap confidence interval over
  users, on the gate's rows and, for the recommender, on the task it is served for; a champion that
  saw the test days refused; minimum improvement and an interval that must exclude zero; latency and
  size guards); the task log lists every check with PASS or FAIL. With no champion and a candidate
  that fails a floor, the strongest floor becomes the candidate (a run of its own, evaluated the
  same way), so the model always has a champion;
- **register**: every candidate becomes a registered model version tagged with its lineage and the
  gate's decision (a rejected one before the floor that serves instead); a passed one gets the alias
  `challenger`;
- **package**: imports the challenger into the Bento store, builds its Bento, starts it with
  `bentoml serve` on a free loopback port and replays the offline evaluation's requests: the served
  answers must match the evaluated ones (parity check). The Bento tag is written to the version.
  A rejected candidate ends here as **skipped**, with the gate's reasons in the log;
- **promote**: moves `champion` to the packaged challenger, provided the champion is still the one
  it was evaluated against.

**Routing the training task** (read when the DAG file is parsed, so set on the DAG processor):

- `SHOPML_TRAIN_POOL` (default `shopml_training`, one slot): the pool the training tasks share, so
  two trainings never share a GPU; give it one slot per GPU of the workers;
- `SHOPML_TRAIN_QUEUE` (default: `SHOPML_QUEUE`, the queue of every other shopml task, itself
  `default` unless set): with the CeleryExecutor, `gpu` sends training to the workers started with
  `airflow celery worker --queues gpu`;
- `SHOPML_TRAIN_EXECUTOR` (default: the configured one): e.g. `KubernetesExecutor` to run training
  as a pod, with Airflow's multiple-executor configuration.

- `SHOPML_TRAIN_NPROC` (default 1): more than one trains with `torchrun` on that many processes of
  the worker, one per GPU (DDP); rank 0 alone tracks the run;
- `SHOPML_TRAIN_RUNNER` (default `task`): `kubernetes_pod` runs training as a pod of the training
  image on a GPU node, with a `KubernetesPodOperator` (`dags/shopml_k8s.py` lists its settings).

The training task itself uses the worker's (or pod's) GPU when there is one (CUDA, else MPS, else
CPU), with bf16 autocast and `torch.compile` there. A rerun of a cleared `train` returns the run this
DAG run already made. A retry of a killed one (SIGKILL, OOM, a lost node or pod) reopens the run it
left `RUNNING` and continues from its last epoch, from the checkpoints under
`$SHOPML_HOME/checkpoints/` (so the pod's state volume must be the workers' one).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from shopml_common import (
    DEFAULT_ARGS,
    MODELS,
    TRAIN_POOL,
    fail_without_retry,
    newest_event_extra,
    retrain_request,
    timed,
)

TRAIN_QUEUE = os.environ.get("SHOPML_TRAIN_QUEUE") or os.environ.get("SHOPML_QUEUE", "default")
TRAIN_EXECUTOR = os.environ.get("SHOPML_TRAIN_EXECUTOR") or None
TRAIN_RUNNER = os.environ.get("SHOPML_TRAIN_RUNNER", "task")
TRAIN_RUNNERS = ("task", "kubernetes_pod")
if TRAIN_RUNNER not in TRAIN_RUNNERS:
    raise ValueError(f"SHOPML_TRAIN_RUNNER={TRAIN_RUNNER!r}: expected one of {', '.join(TRAIN_RUNNERS)}")
TRAIN_TIMEOUT = timedelta(hours=2)
TRAIN_NPROC = int(os.environ.get("SHOPML_TRAIN_NPROC", "1"))
WEEKLY_FALLBACK = CronTriggerTimetable("0 3 * * 1", timezone="UTC")


def _announced_version(context) -> str | None:
    """The dataset version the newest triggering Asset event carries, or None for a run the weekly
    schedule or a person started."""
    return newest_event_extra(context, "version")


def _retrain_reason(context) -> str:
    """Why this run retrains: the newest triggering request's reason, else the schedule or a person."""
    reason = newest_event_extra(context, "reason")
    if reason:
        return reason
    return (
        "weekly schedule"
        if context.get("dag_run") is not None
        and str(getattr(context["dag_run"], "run_type", "")).lower().endswith("scheduled")
        else "manual or weekly run"
    )


def _chain(model: str) -> None:
    # Each task is one call of pipeline.lifecycle.steps, the functions `python -m pipeline` runs too.
    @task(task_id=f"features_{model}")
    @timed
    def features(**context) -> dict:
        from pipeline.core.params import load_params
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        paths = get_state_paths()
        # Fixed once per DAG run: a retry or a cleared rerun after newer days works on the same data.
        version = steps.pinned_dataset_version(
            paths, context["dag"].dag_id, context["run_id"], _announced_version(context)
        )
        print(f"DAG run {context['run_id']} works on dataset version {version}")
        return steps.features(paths, load_params(), model, version)

    @task(
        task_id=f"train_{model}",
        execution_timeout=TRAIN_TIMEOUT,
        pool=TRAIN_POOL,
        queue=TRAIN_QUEUE,
        executor=TRAIN_EXECUTOR,
    )
    @timed
    def train_model(built: dict, **context) -> dict:
        from pipeline.core.params import load_params
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        # A cleared and rerun task returns the run this DAG run already made: never a second model.
        tags = {
            "airflow.dag_run_id": context["run_id"],
            "airflow.dag_id": f"retrain_{model}",
            "shopml.retrain_reason": _retrain_reason(context)[:500],
        }
        return steps.train(get_state_paths(), load_params(), model, built, tags, nproc=TRAIN_NPROC)

    @task(task_id=f"evaluate_{model}")
    @fail_without_retry
    @timed
    def evaluate(trained: dict) -> dict:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        return steps.evaluate(get_state_paths(), model, trained)

    @task(task_id=f"gate_{model}")
    @fail_without_retry
    @timed
    def gate(evaluated: dict) -> dict:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        return steps.gate(get_state_paths(), model, evaluated)

    @task(task_id=f"register_{model}")
    @fail_without_retry
    @timed
    def register(gated: dict) -> dict:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        return steps.register(get_state_paths(), model, gated)

    @task(task_id=f"package_{model}", execution_timeout=timedelta(minutes=20))
    @fail_without_retry  # a parity mismatch will not change on a retry; a server that did not start may
    @timed
    def package(registered: dict) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        try:
            return steps.package(get_state_paths(), model, registered)
        except steps.CandidateRejected as rejected:
            raise AirflowSkipException(str(rejected)) from None

    @task(task_id=f"promote_{model}")
    @fail_without_retry  # a moved champion: the candidate must be evaluated again, not retried
    @timed
    def promote(packaged: dict) -> str:
        from pipeline.core.settings import get_state_paths
        from pipeline.lifecycle import steps

        return steps.promote(get_state_paths(), model, packaged, by="airflow")["champion"]

    built = features()
    if TRAIN_RUNNER == "kubernetes_pod":
        from shopml_k8s import training_pod

        trained = training_pod(model, built, pool=TRAIN_POOL, execution_timeout=TRAIN_TIMEOUT).output
    else:
        trained = train_model(built)
    promote(package(register(gate(evaluate(trained)))))


def _retrain_dag(model: str) -> None:
    @dag(
        dag_id=f"retrain_{model}",
        schedule=AssetOrTimeSchedule(timetable=WEEKLY_FALLBACK, assets=[retrain_request(model)]),
        start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),
        catchup=False,
        max_active_runs=1,
        default_args={**DEFAULT_ARGS, "execution_timeout": timedelta(minutes=30)},
        doc_md=__doc__,
        tags=["shopml", "training", model],
    )
    def retrain():
        _chain(model)

    retrain()


for _model in MODELS:
    _retrain_dag(_model)
