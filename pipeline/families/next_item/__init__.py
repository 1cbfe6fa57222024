"""Next-item recommendation: SASRec over each user's item sequence, served by user id or history.

``features`` (vocabulary, sequences, windows), ``train`` (SASRec and its baselines, one MLflow run),
``pyfunc`` (the served model: ids in, ranked ids out), ``evaluation`` (test set, scores, parity).
"""

from __future__ import annotations

from operator import attrgetter

from pipeline.families.next_item import evaluation, features, monitoring, serving, train
from pipeline.families.spec import ModelSpec

SPEC = ModelSpec(
    name="next_item",
    params=attrgetter("train_recommender"),
    feature_params=("valid_days", "test_days", "max_len", "recent_days"),
    write_features=features.write_features,
    train=train.train,
    test_set=evaluation.test_set,
    score=evaluation.score,
    baselines=evaluation.baselines,
    plot_metric="ndcg_at_20",
    service="pipeline.families.next_item.service:NextItemService",
    snapshot_tables=serving.snapshot_tables,
    endpoint="recommend",
    parity=evaluation.parity,
    parity_rows=1,
    smoke_checks=evaluation.smoke_checks,
    serving_states=evaluation.serving_states,
    user_parity=evaluation.user_parity,
    monitoring=monitoring.MONITORING,
    floor_model=evaluation.floor_model,
)
