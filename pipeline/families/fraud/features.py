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
    whole = split_by_time(events, 0, 0)  # the data's whole UTC days
    split = fraud_split(
        whole.start, whole.end, params.valid_days, params.test_days, params.maturity_days, params.min_train_days
    )
    periods, orders = labelled_features(events, split, params.maturity_days)
    counts = {name: rows.height for name, rows in periods.items()}
    counts |= {f"{name}_fraud": int(rows["label"].sum()) for name, rows in periods.items()}
    counts["orders"] = orders
    return FraudFeatures(split, periods, counts)


def labelled_features(
    events: pl.DataFrame, split: FraudSplit, maturity_days: int
) -> tuple[dict[str, pl.DataFrame], int]:
    """Each period's labelled orders (``labelled_periods``) with their features, in time order; and
    how many orders the events hold."""
    orders = orders_of(events)
    features = order_features(orders, events)
    periods = {
        name: features.join(rows.select("session_id", "label", "label_time"), on="session_id").sort("order_time")
        for name, rows in labelled_periods(orders, events, split, maturity_days).items()
    }
    return periods, orders.height


def write_features(out: Path, dataset: Dataset, params: TrainFraudParams):
    """``train.parquet``, ``valid.parquet``, ``test.parquet``: the labelled orders of each period."""
    f = fraud_features(dataset.events(), params)
    for name in PERIODS:
        f.periods[name].write_parquet(Path(out) / f"{name}.parquet")
    return f.counts, f.split
