"""Price optimisation: demand per item and period, its answer to price, and the price to set.

``demand`` (the panel and forecasting rows), ``forecast`` (LightGBM over every item, the floors,
WAPE and RMSSE, the rolling-origin backtest), ``elasticity`` (double ML per item, shrunk toward
its category), ``pricing`` (the recommendation inside observed prices), ``features``, ``train``,
``pyfunc``, ``evaluation``, ``serving`` and ``service`` (``/forecast``, ``/price``).
"""

from __future__ import annotations

from operator import attrgetter

from pipeline.families.price import evaluation, features, monitoring, serving, train
from pipeline.families.spec import ModelSpec

SPEC = ModelSpec(
    name="price",
    params=attrgetter("train_price"),
    feature_params=("period", "valid_days", "test_days", "items"),
    write_features=features.write_features,
    train=train.train,
    test_set=evaluation.test_set,
    score=evaluation.score,
    baselines=evaluation.baselines,
    plot_metric="wape",
    service="pipeline.families.price.service:PriceService",
    endpoint="forecast",
    parity=evaluation.parity,
    parity_rows=5,
    smoke_checks=evaluation.smoke_checks,
    snapshot_tables=serving.snapshot_tables,
    serving_states=serving.serving_states,
    user_parity=evaluation.item_parity,
    monitoring=monitoring.MONITORING,
    floor_model=evaluation.floor_model,
    gate_statistic=evaluation.gate_statistic,
    clusters="items",
)
