"""
### train_models

Retrains both models whenever `ingest_events` publishes a new dataset version (the Asset
`shopml://dataset/canonical`), each on the current version with a time-based split:

- **train_recommender**: SASRec next-item model beside popularity, recent-popularity and
  co-occurrence baselines;
- **train_propensity**: DCN-v2 purchase-propensity model beside a logistic regression.

The two tasks are independent: one failing never hides the other's result. Each logs one MLflow run
(params, per-epoch metrics, dataset version, git commit, split, environment, the model as a pyfunc);
the task log ends with the run id and the test metrics of the model and its baselines.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task
from shopml_common import CANONICAL_DATASET, DEFAULT_ARGS


def _summary(outcome) -> dict:
    print(f"run {outcome.run_id} on dataset {outcome.dataset_version}: model {outcome.model_uri}")
    for name, value in sorted(outcome.metrics.items()):
        print(f"  {name} = {value:.4f}")
    return {"run_id": outcome.run_id, "model_uri": outcome.model_uri, "dataset_version": outcome.dataset_version}


@dag(
    dag_id="train_models",
    schedule=[CANONICAL_DATASET],
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "execution_timeout": timedelta(hours=2)},
    doc_md=__doc__,
    tags=["shopml", "training"],
)
def train_models():
    @task
    def train_recommender() -> dict:
        from pipeline.params import load_params
        from pipeline.settings import get_state_paths
        from pipeline.train import train_recommender

        return _summary(train_recommender(get_state_paths(), load_params().train_recommender))

    @task
    def train_propensity() -> dict:
        from pipeline.params import load_params
        from pipeline.settings import get_state_paths
        from pipeline.train import train_propensity

        return _summary(train_propensity(get_state_paths(), load_params().train_propensity))

    train_recommender()
    train_propensity()


train_models()
