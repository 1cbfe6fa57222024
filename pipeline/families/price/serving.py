"""What the ``price`` service computes, without HTTP: request schemas, snapshot tables, the
per-item state packaged with a Bento, and the forecasts and prices of a batch of requests.

The snapshot keeps each item's daily sales and the catalog's history; packaging turns them into
the forecasting rows at the snapshot's next period, for every item, with the model's own period,
history and horizon (``serving_states``), and reads the pricing rules of ``policy.yaml`` then.
``/forecast`` by item id reads those rows; with rows sent whole, it forecasts them as they are
(the parity check replays the offline evaluation's rows that way).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from pydantic import BaseModel, Field, model_validator

from pipeline.core.errors import BadInput
from pipeline.serving.api import Id, Strict

MAX_ITEMS = 1000
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
STATE_ROWS = "rows.parquet"
STATE_RULES = "rules.json"


class ForecastRow(Strict):
    """A forecasting row sent whole (what the offline evaluation scored)."""

    item_id: Id
    category: str = Field(max_length=256)
    category_price: float | None = Field(None, gt=0)
    origin: str = Field(pattern=DATE_PATTERN)
    target_period: str = Field(pattern=DATE_PATTERN)
    h: int = Field(ge=1, le=366)
    price: float | None = Field(None, gt=0)
    units_history: list[float | None] = Field(max_length=400, description="y_1 (the period before the origin) first")
    price_history: list[float | None] = Field(max_length=400)

    @model_validator(mode="after")
    def _same_length(self) -> ForecastRow:
        if len(self.units_history) != len(self.price_history):
            raise ValueError(
                f"units_history has {len(self.units_history)} periods, price_history {len(self.price_history)}"
            )
        return self


class ForecastRequest(Strict):
    item_ids: list[Id] | None = Field(None, min_length=1, max_length=MAX_ITEMS)
    horizon: int | None = Field(
        None, ge=1, description="periods ahead (default: the model's horizon, the most it allows)"
    )
    prices: dict[str, float] | None = Field(
        None, description="a planned price per item id (default: its current price)"
    )
    rows: list[ForecastRow] | None = Field(None, min_length=1, max_length=MAX_ITEMS)
    skip_unknown: bool = Field(
        False,
        description="answer for the known items and list the others under unknown (default: an unknown item is a 400)",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ForecastRequest:
        if (self.item_ids is None) == (self.rows is None):
            raise ValueError("send item_ids (looked up) or rows (forecast as sent), not both and not neither")
        for item, price in (self.prices or {}).items():
            if not price > 0:
                raise ValueError(f"prices.{item}: must be above zero, got {price}")
        return self


class Forecast(BaseModel):
    item_id: str
    h: int
    target_period: str
    price: float | None
    units: float


class Forecasts(BaseModel):
    forecasts: list[Forecast]
    unknown: list[str] = Field(
        default_factory=list, description="items skipped (skip_unknown): not forecast by the model"
    )
    origin: str | None
    period: str
    model_version: str


class PriceRequest(Strict):
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_ITEMS)
    costs: dict[str, float] | None = Field(None, description="unit cost per item id: maximise margin, not revenue")

    @model_validator(mode="after")
    def _costs(self) -> PriceRequest:
        for item, cost in (self.costs or {}).items():
            if not cost >= 0:
                raise ValueError(f"costs.{item}: must not be negative, got {cost}")
        return self


class Prices(BaseModel):
    prices: list[dict]
    period: str
    model_version: str
    note: str = (
        "recommendations come from observed prices and a double-ML elasticity; none leaves the range of "
        "prices each item sold at, and none is a measured uplift: a price test measures one"
    )


def snapshot_tables(events: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime) -> dict:
    """Each item's daily sales and the catalog's history (prices as they were), read whole."""
    from pipeline.families.price.demand import daily_sales

    history = catalog if "known_from" in catalog.columns else catalog.with_columns(pl.lit(cutoff).alias("known_from"))
    return {"sales": (daily_sales(events, end=cutoff), []), "catalog": (history, [])}


def serving_states(python_model, snapshot, out: Path) -> dict:
    """The forecasting rows of every item at the snapshot's next period, with the model's shape,
    and the pricing rules of the policy file as they are now."""
    from pipeline.families.price.demand import next_origin, panel_from_sales, rows_at
    from pipeline.families.price.features import whole_periods
    from pipeline.families.price.pricing import load_pricing_policy

    start = time.perf_counter()
    config = python_model.config
    panel = panel_from_sales(snapshot.tables["sales"], snapshot.tables["catalog"], config.period)
    panel = whole_periods(panel, snapshot.cutoff, config.period)
    origin = next_origin(panel, config.period)
    rows = rows_at(panel, origin, config.horizon, config.history, config.period)
    out.mkdir(parents=True, exist_ok=True)
    rows.write_parquet(out / STATE_ROWS)
    (out / STATE_RULES).write_text(json.dumps(load_pricing_policy().to_dict()))
    meta = {
        "users": rows["item_id"].n_unique(),  # the packaging log's count: items here
        "origin": origin.date().isoformat(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


class PriceEngine:
    """One model version's pyfunc and packaged state: forecasts and prices."""

    def __init__(self, pyfunc, states_path: Path) -> None:
        from pipeline.families.price.pricing import PricingPolicy

        self.pyfunc = pyfunc
        self.config = pyfunc.config
        self.rows = pl.read_parquet(Path(states_path) / STATE_ROWS).sort("item_id", "h")
        self.meta = json.loads((Path(states_path) / "meta.json").read_text())
        self.rules = PricingPolicy(**json.loads((Path(states_path) / STATE_RULES).read_text()))
        self.current = dict(self.rows.filter(pl.col("h") == 1).select("item_id", "price").iter_rows())
        known = sorted(pyfunc.items)
        self.items = set(known)
        # Items to try (``/metadata``): up to 10 that sold at enough prices to get a recommendation,
        # then ids spread over the rest, 20 in all.
        priceable = [
            i
            for i in known
            if i in self.current
            and int((pyfunc.ranges.get(i) or {}).get("distinct_prices", 0)) >= self.rules.min_distinct_prices
        ]
        spread = known[:: max(1, len(known) // 20)]
        self.sample = list(dict.fromkeys(priceable[:: max(1, len(priceable) // 10)][:10] + spread))[:20]

    def check_items(self, items: list[str]) -> None:
        for i, item in enumerate(items):
            if item not in self.items or item not in self.current:
                raise BadInput(
                    f"item_ids[{i}]: unknown item {item!r} (the model forecasts {len(self.items)} items; "
                    f"e.g. {', '.join(self.sample[:3])})"
                )

    def lookup(self, request: ForecastRequest) -> pl.DataFrame:
        """The packaged rows of the request's items (in request order), steps up to its horizon,
        prices replaced where it names some."""
        horizon = request.horizon or self.config.horizon
        if horizon > self.config.horizon:
            raise BadInput(
                f"horizon: {horizon} is beyond the {self.config.horizon} {self.config.period}s "
                "the model was trained for"
            )
        items = list(request.item_ids or [])
        if request.skip_unknown:
            items = [i for i in items if i in self.items and i in self.current]
        self.check_items(items)
        for item in request.prices or {}:
            if item not in items:
                raise BadInput(f"prices.{item}: not among item_ids")
        order = pl.DataFrame(
            {"item_id": items, "_order": list(range(len(items)))}, schema={"item_id": pl.String, "_order": pl.Int64}
        )
        rows = (
            order.join(self.rows.filter(pl.col("h") <= horizon), on="item_id", how="left")
            .sort("_order", "h")
            .drop("_order")
        )
        if request.prices:
            planned = pl.DataFrame({"item_id": list(request.prices), "_price": list(request.prices.values())})
            rows = (
                rows.join(planned, on="item_id", how="left", maintain_order="left")
                .with_columns(pl.coalesce("_price", "price").alias("price"))
                .drop("_price")
            )
        return rows

    def sent_rows(self, request: ForecastRequest) -> pl.DataFrame:
        """Rows sent whole, as the pyfunc's inputs."""
        from pipeline.families.price.demand import lag_names
        from pipeline.families.price.pyfunc import inputs_to_rows

        history = self.config.history
        ys, ps = lag_names(history)
        records = []
        for i, row in enumerate(request.rows or []):
            if len(row.units_history) != history:
                raise BadInput(f"rows[{i}].units_history: {len(row.units_history)} periods, the model reads {history}")
            records.append(
                {
                    "item_id": row.item_id,
                    "category": row.category,
                    "category_price": row.category_price,
                    "origin": row.origin,
                    "target_period": row.target_period,
                    "h": row.h,
                    "price": row.price,
                    **dict(zip(ys, row.units_history, strict=True)),
                    **dict(zip(ps, row.price_history, strict=True)),
                }
            )
        frame = pd.DataFrame.from_records(records)
        for c in ("category_price", "price", *ys, *ps):
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
        return inputs_to_rows(frame)

    def forecast_requests(self, requests: list[pl.DataFrame]) -> list[np.ndarray]:
        """One forecast call for the rows of a batch of requests; forecasts per request."""
        sizes = [r.height for r in requests]
        frame = pl.concat(requests, how="vertical_relaxed") if requests else pl.DataFrame()
        out = self.pyfunc.forecast(frame) if frame.height else np.zeros(0)
        parts, start = [], 0
        for n in sizes:
            parts.append(out[start : start + n])
            start += n
        return parts

    def prices(self, request: PriceRequest) -> list[dict]:
        from pipeline.families.price.pricing import recommend

        self.check_items(request.item_ids)
        costs = request.costs or {}
        for item in costs:
            if item not in request.item_ids:
                raise BadInput(f"costs.{item}: not among item_ids")
        rows = self.lookup(
            ForecastRequest(item_ids=request.item_ids, horizon=1, prices=None, rows=None, skip_unknown=False)
        )
        demand = self.pyfunc.forecast(rows)
        return [
            recommend(
                item,
                self.current[item],
                float(d),
                self.pyfunc.elasticity.get(item),
                self.pyfunc.ranges.get(item),
                self.rules,
                costs.get(item),
            )
            for item, d in zip(rows["item_id"].to_list(), demand, strict=True)
        ]


def forecasts_of(rows: pl.DataFrame, units: np.ndarray) -> list[Forecast]:
    return [
        Forecast(
            item_id=i,
            h=int(h),
            target_period=t.date().isoformat(),
            price=None if p is None else float(p),
            units=float(u),
        )
        for i, h, t, p, u in zip(
            rows["item_id"].to_list(),
            rows["h"].to_list(),
            rows["target_period"].to_list(),
            rows["price"].to_list(),
            units,
            strict=True,
        )
    ]
