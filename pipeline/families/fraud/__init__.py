"""Risk control: fraud scores for orders, with labels that arrive weeks late.

``orders`` (orders, labels as known at a time, point-in-time features), ``split`` (train | gap |
validation | gap | test | gap, each gap the maturity window), ``features``, ``scoring`` (the rules,
LightGBM, the DCN-v2 network), ``decisions`` (costs, bands within the review budget), ``train``,
``pyfunc``, ``evaluation`` (the gate's cost per order over orders), ``serving`` and ``service``
(``/score``), ``monitoring`` (figures once labels mature).
"""

from __future__ import annotations

from operator import attrgetter

from pipeline.families.fraud import evaluation, features, monitoring, serving, train
from pipeline.families.spec import ModelSpec

SPEC = ModelSpec(
    name="fraud",
    params=attrgetter("train_fraud"),
    feature_params=("maturity_days", "valid_days", "test_days", "min_train_days"),
    write_features=features.write_features,
    train=train.train,
    test_set=evaluation.test_set,
    score=evaluation.score,
    baselines=evaluation.baselines,
    plot_metric="cost_per_1000",
    service="pipeline.families.fraud.service:FraudService",
    endpoint="score",
    parity=evaluation.parity,
    smoke_checks=evaluation.smoke_checks,
    snapshot_tables=serving.snapshot_tables,
    user_parity=evaluation.order_parity,
    monitoring=monitoring.MONITORING,
    floor_model=evaluation.floor_model,
    gate_statistic=evaluation.gate_statistic,
    clusters="orders",
)
