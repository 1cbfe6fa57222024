"""The fraud family's feature set: the labelled orders of each period with their point-in-time
features, written once per dataset version (``pipeline.families.featureset``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.core.params import TrainFraudParams
from pipeline.data.dataset import Dataset, split_by_time
from pipeline.families.fraud.orders import order_features, orders_of
from pipeline.families.fraud.split import FraudSplit, fraud_split, labelled_periods

PERIODS = ("train", "valid", "test")


@dataclass
class FraudFeatures:
    split: FraudSplit
    periods: dict[str, pl.DataFrame]  # feature rows with ``label`` and ``label_time``
    counts: dict[str, int]


def fraud_features(events: pl.DataFrame, params: TrainFraudParams) -> FraudFeatures:
    """Every order's features, the split cut from the data's whole days, and each period's orders
    with the labels known at its moment."""
    orders = orders_of(events)
    whole = split_by_time(events, 0, 0)  # the data's whole UTC days
    split = fraud_split(
        whole.start, whole.end, params.valid_days, params.test_days, params.maturity_days, params.min_train_days
    )
    features = order_features(orders, events)
    periods = {
        name: features.join(rows.select("session_id", "label", "label_time"), on="session_id").sort("order_time")
        for name, rows in labelled_periods(orders, events, split, params.maturity_days).items()
    }
    counts = {name: rows.height for name, rows in periods.items()}
    counts |= {f"{name}_fraud": int(rows["label"].sum()) for name, rows in periods.items()}
    counts["orders"] = orders.height
    return FraudFeatures(split, periods, counts)


def write_features(out: Path, dataset: Dataset, params: TrainFraudParams):
    """``train.parquet``, ``valid.parquet``, ``test.parquet``: the labelled orders of each period."""
    f = fraud_features(dataset.events(), params)
    for name in PERIODS:
        f.periods[name].write_parquet(Path(out) / f"{name}.parquet")
    return f.counts, f.split
