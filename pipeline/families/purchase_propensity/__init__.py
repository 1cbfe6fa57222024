"""Purchase propensity: DCN-v2 over (user, item) aggregates, the probability of a purchase soon.

``features`` (aggregates before a cutoff, labels after), ``train`` (DCN-v2, calibration and the
logistic-regression baseline), ``pyfunc`` (feature rows in, probabilities out), ``evaluation``.
"""

from __future__ import annotations

from operator import attrgetter

from pipeline.families.base import auc_gate_statistic
from pipeline.families.purchase_propensity import evaluation, features, monitoring, serving, train
from pipeline.families.spec import ModelSpec

SPEC = ModelSpec(
    name="purchase_propensity",
    params=attrgetter("train_propensity"),
    feature_params=("valid_days", "test_days", "horizon_days", "lookback_days", "cutoff_stride_days"),
    write_features=features.write_features,
    train=train.train,
    test_set=evaluation.test_set,
    score=evaluation.score,
    baselines=evaluation.baselines,
    plot_metric="auc",
    service="pipeline.families.purchase_propensity.service:PropensityService",
    snapshot_tables=serving.snapshot_tables,
    endpoint="purchase_probability",
    parity=evaluation.parity,
    parity_rows=4,  # a request carries many candidates: more rows for about as many requests
    user_parity=evaluation.user_parity,
    monitoring=monitoring.MONITORING,
    floor_model=evaluation.floor_model,
    gate_statistic=auc_gate_statistic,
)
