"""The price family's models as MLflow pyfuncs: forecasting rows in, forecasts out.

Input: one row per (item, origin, step) as ``rows_to_inputs`` writes them: ``item_id``,
``category``, ``category_price``, ``origin`` and ``target_period`` (``YYYY-MM-DD``), ``h``,
``price`` (the target period's price) and the lags ``y_1`` .. ``y_L`` and ``p_1`` .. ``p_L``.
Output: a DataFrame with ``forecast`` (units in the target period).

Both the learned forecaster (``PricePyfunc``) and a floor serving in its place (``FloorPyfunc``:
naive, seasonal naive or ETS, when no learned candidate beat them) carry the elasticity table and
each item's observed price range, so either answers ``/price`` the same way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import polars as pl
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from pipeline.families.price.forecast import ForecastConfig

DATE = "%Y-%m-%d"


def rows_to_inputs(rows: pl.DataFrame, history: int) -> pd.DataFrame:
    """Forecasting rows (``demand.forecast_rows``) as the pyfunc's input frame."""
    from pipeline.families.price.demand import lag_names

    ys, ps = lag_names(history)
    return rows.select(
        "item_id",
        "category",
        pl.col("category_price").cast(pl.Float64),
        pl.col("origin").dt.strftime(DATE),
        pl.col("target_period").dt.strftime(DATE),
        pl.col("h").cast(pl.Int64),
        pl.col("price").cast(pl.Float64),
        *(pl.col(c).cast(pl.Float64) for c in (*ys, *ps)),
    ).to_pandas()


def inputs_to_rows(frame: pd.DataFrame) -> pl.DataFrame:
    """The pyfunc's input frame back as forecasting rows (dates parsed, UTC)."""
    rows = pl.from_pandas(frame.reset_index(drop=True))
    return rows.with_columns(
        pl.col("origin").str.to_datetime(DATE, time_zone="UTC", time_unit="us"),
        pl.col("target_period").str.to_datetime(DATE, time_zone="UTC", time_unit="us"),
        pl.col("h").cast(pl.Int32),
        pl.lit(None, dtype=pl.Float64).alias("units"),
    )


class _Pricing:
    """What both pyfuncs share: the elasticity table, the observed ranges, the configuration."""

    config: ForecastConfig
    elasticity: dict[str, dict]
    ranges: dict[str, dict]

    def _load_pricing(self, artifacts: dict) -> None:
        from pipeline.families.price.forecast import ForecastConfig

        with open(artifacts["pricing"]) as fh:
            pricing = json.load(fh)
        self.config = ForecastConfig(**pricing["config"])
        self.elasticity = {row["item_id"]: row for row in pricing["elasticity"]["items"]}
        self.ranges = {row["item_id"]: row for row in pricing["ranges"]}
        self.pricing_meta = {k: v for k, v in pricing["elasticity"].items() if k != "items"}

    @property
    def items(self) -> set[str]:
        return set(self.ranges) | set(self.elasticity)


class PricePyfunc(_Pricing, PythonModel):
    @classmethod
    def from_parts(cls, forecaster, pricing: dict) -> PricePyfunc:
        from pipeline.families.price.forecast import ForecastConfig

        wrapper = cls()
        wrapper.forecaster = forecaster
        wrapper.config = ForecastConfig(**pricing["config"])
        wrapper.elasticity = {row["item_id"]: row for row in pricing["elasticity"]["items"]}
        wrapper.ranges = {row["item_id"]: row for row in pricing["ranges"]}
        return wrapper

    def load_context(self, context) -> None:
        from pipeline.families.price.forecast import Forecaster

        with open(context.artifacts["forecaster"]) as fh:
            self.forecaster = Forecaster.from_dict(json.load(fh))
        self._load_pricing(context.artifacts)

    def forecast(self, rows: pl.DataFrame) -> np.ndarray:
        return self.forecaster.predict(rows)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"forecast": self.forecast(inputs_to_rows(model_input))})


class FloorPyfunc(_Pricing, PythonModel):
    """A floor (``naive``, ``seasonal_naive``, ``ets``) serving as the family's model."""

    def load_context(self, context) -> None:
        self._load_pricing(context.artifacts)
        with open(context.artifacts["floor"]) as fh:
            self.floor = json.load(fh)["floor"]

    def forecast(self, rows: pl.DataFrame) -> np.ndarray:
        from pipeline.families.price import forecast as fc

        if self.floor == "seasonal_naive":
            return fc.seasonal_naive(rows, self.config)[0]
        if self.floor == "ets":
            return fc.ets(rows.with_columns(pl.col("origin")), self.config)
        return fc.naive(rows, self.config)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"forecast": self.forecast(inputs_to_rows(model_input))})
