"""The fraud family's split: train | gap | validation | gap | test | gap, each gap the label
maturity window.

Labels arrive late, so each period is labelled as of the moment it would be used, and every order
in it is old enough by then for its label to be final:

* training rows are the orders before ``train_end``, labelled as known at ``valid_start`` (when the
  model is fitted, in the protocol's replay), which is ``maturity_days`` after ``train_end``;
* validation rows (thresholds, early stopping) are labelled as known at ``test_start``;
* test rows (the gate's figures) are labelled as known at the end of the data, which is
  ``maturity_days`` after ``test_end``.

An order whose label is not known at its period's moment (too young, no chargeback yet) is left
out; it is never counted as genuine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from pipeline.core.errors import BadInput
from pipeline.families.fraud.orders import labels_as_of


@dataclass(frozen=True)
class FraudSplit:
    start: datetime
    train_end: datetime
    valid_start: datetime
    valid_end: datetime
    test_start: datetime
    test_end: datetime
    end: datetime  # the data's end: the test labels are those known then

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in self.__dict__.items()}


def fraud_split(
    start: datetime, end: datetime, valid_days: int, test_days: int, maturity_days: int, min_train_days: int = 7
) -> FraudSplit:
    """Cut ``[start, end)`` (whole days) into the periods and gaps, from the end backwards."""
    gap = timedelta(days=maturity_days)
    test_end = end - gap
    test_start = test_end - timedelta(days=test_days)
    valid_end = test_start - gap
    valid_start = valid_end - timedelta(days=valid_days)
    train_end = valid_start - gap
    if train_end - start < timedelta(days=min_train_days):
        span = (end - start).days
        need = min_train_days + valid_days + test_days + 3 * maturity_days
        raise BadInput(
            f"the data spans {span} day(s): the fraud split needs at least {need} "
            f"({min_train_days} training, {valid_days} validation, {test_days} test and three "
            f"{maturity_days}-day label maturity gaps)"
        )
    return FraudSplit(start, train_end, valid_start, valid_end, test_start, test_end, end)


def labelled_periods(
    orders: pl.DataFrame, events: pl.DataFrame, split: FraudSplit, maturity_days: int
) -> dict[str, pl.DataFrame]:
    """The orders of each period with the labels known at that period's moment; unknown ones left out."""

    def period(first: datetime, stop: datetime, as_of: datetime) -> pl.DataFrame:
        known = labels_as_of(orders, events, as_of, maturity_days)
        inside = (pl.col("order_time") >= first) & (pl.col("order_time") < stop)
        return known.filter(inside & pl.col("label").is_not_null())

    return {
        "train": period(split.start, split.train_end, split.valid_start),
        "valid": period(split.valid_start, split.valid_end, split.test_start),
        "test": period(split.test_start, split.test_end, split.end),
    }
