"""Demand per item and period, and the forecasting rows cut from it at an origin.

The panel has one row per (item, period) from the item's first sale to the end of the data, zeros
included: ``units`` is what was bought minus what came back (``return`` events, UCI's cancelled
invoices), ``price`` is the mean price paid that period (weighted by units), else the catalog's
list price as known on the period's first day (point in time), else the last price paid before.

A forecasting row is (item, origin, step h): what is known at the origin (the last ``history``
periods of units and prices, as lag columns ``y_1`` .. ``y_L``, ``p_1`` .. ``p_L``; ``y_1`` is the
period just before the origin), the target period's calendar and its price (the price is the
shop's decision: a forecast is demand *at* a price), and, for training and evaluation, the units
of the target period. The pyfunc receives exactly these rows, so the model, every floor and the
service compute from the same inputs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from pipeline.core.errors import BadInput

PERIODS = {"day": timedelta(days=1), "week": timedelta(weeks=1)}
PROMO_DISCOUNT = 0.03  # a price paid this far below the list price is a promotion


def period_start(column: str, period: str) -> pl.Expr:
    """The start of the period holding ``column`` (UTC days; weeks start on Monday)."""
    return pl.col(column).dt.truncate("1w" if period == "week" else "1d")


def daily_sales(events: pl.DataFrame, start: datetime | None = None, end: datetime | None = None) -> pl.DataFrame:
    """Units bought and returned, and the amount paid, per (item, UTC day): what a panel of any
    period length is summed from (and what the serving snapshot keeps)."""
    trade = events.filter(pl.col("event_type").is_in(["purchase", "return"]))
    if start is not None:
        trade = trade.filter(pl.col("event_time") >= start)
    if end is not None:
        trade = trade.filter(pl.col("event_time") < end)
    qty = pl.col("quantity").cast(pl.Float64)
    bought = pl.col("event_type") == "purchase"
    priced = bought & pl.col("price").is_not_null()
    return (
        trade.with_columns(pl.col("event_time").dt.truncate("1d").alias("day"))
        .group_by("item_id", "day")
        .agg(
            qty.filter(bought).sum().alias("bought"),
            qty.filter(~bought).sum().alias("returned"),
            (qty * pl.col("price")).filter(priced).sum().alias("paid"),
            qty.filter(priced).sum().alias("paid_units"),
        )
        .sort("item_id", "day")
    )


def demand_panel(
    events: pl.DataFrame,
    catalog_history: pl.DataFrame,
    period: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pl.DataFrame:
    """Units, price and list price per (item, period) over [start, end) of the events
    (``panel_from_sales`` of ``daily_sales``)."""
    return panel_from_sales(daily_sales(events, start, end), catalog_history, period)


def panel_from_sales(sales: pl.DataFrame, catalog_history: pl.DataFrame, period: str) -> pl.DataFrame:
    """The panel of ``daily_sales`` rows in periods of ``period``.

    Returns columns item_id, category, period (datetime), units, returned, price, list_price, sold
    (whether anything was bought that period). Periods run from each item's first purchase to the
    last period of the data, every one present.
    """
    if period not in PERIODS:
        raise BadInput(f"price.period must be one of {', '.join(PERIODS)}, got {period!r}")
    if sales.height == 0 or float(sales["bought"].sum()) <= 0:
        raise BadInput("no purchase events: demand cannot be measured")
    sales = (
        sales.with_columns(period_start("day", period).alias("period"))
        .group_by("item_id", "period")
        .agg(
            pl.col("bought").sum(),
            pl.col("returned").sum(),
            pl.col("paid").sum().alias("_paid"),
            pl.col("paid_units").sum().alias("_paid_units"),
        )
    )
    first = sales.filter(pl.col("bought") > 0).group_by("item_id").agg(pl.col("period").min().alias("first"))
    last_period = sales["period"].max()
    step = PERIODS[period]
    grid = first.with_columns(
        pl.datetime_ranges(pl.col("first"), pl.lit(last_period), interval=f"{step.days}d").alias("period")
    ).explode("period")
    panel = grid.select("item_id", pl.col("period").cast(sales["period"].dtype)).join(
        sales, on=["item_id", "period"], how="left"
    )
    panel = panel.with_columns(
        pl.col("bought").fill_null(0.0),
        pl.col("returned").fill_null(0.0),
        pl.when(pl.col("_paid_units") > 0).then(pl.col("_paid") / pl.col("_paid_units")).alias("paid_price"),
    )
    panel = _with_list_price(panel, catalog_history, step).sort("item_id", "period")
    # The price of a period: paid, else the list price then, else the last paid before (carried on).
    panel = panel.with_columns(
        pl.coalesce("paid_price", "list_price").forward_fill().over("item_id").alias("price"),
    ).with_columns(
        pl.col("price").backward_fill().over("item_id"),
        (pl.col("bought") - pl.col("returned")).alias("units"),
        (pl.col("bought") > 0).alias("sold"),
    )
    return panel.select(
        "item_id", "category", "period", "units", "returned", "price", "list_price", "sold"
    ).with_columns(pl.col("category").fill_null("unknown"))


def _with_list_price(panel: pl.DataFrame, history: pl.DataFrame, step: timedelta) -> pl.DataFrame:
    """The catalog's list price and category as known by the end of each period's first day."""
    if history.height == 0:
        return panel.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("list_price"), pl.lit(None, dtype=pl.String).alias("category")
        )
    known = history.select(
        "item_id", "category", pl.col("price").alias("list_price"), pl.col("known_from").cast(panel["period"].dtype)
    ).sort("known_from")
    looked_up = (
        panel.with_columns((pl.col("period") + timedelta(days=1)).alias("_known_by"))
        .sort("_known_by")
        .join_asof(
            known, left_on="_known_by", right_on="known_from", by="item_id", strategy="backward", check_sortedness=False
        )
        .drop("_known_by", "known_from")
    )
    # An item the catalog listed only later keeps the category it got (categories do not move).
    latest = history.sort("known_from").group_by("item_id").agg(pl.col("category").last().alias("_category"))
    return (
        looked_up.join(latest, on="item_id", how="left")
        .with_columns(pl.coalesce("category", "_category").alias("category"))
        .drop("_category")
    )


def top_items(panel: pl.DataFrame, n: int, before: datetime | None = None) -> list[str]:
    """The ``n`` items with the most units sold (before ``before``), ties by id."""
    part = panel if before is None else panel.filter(pl.col("period") < before)
    ranked = (
        part.group_by("item_id")
        .agg(pl.col("units").clip(0).sum().alias("u"))
        .sort(["u", "item_id"], descending=[True, False])
    )
    return ranked.head(n)["item_id"].to_list()


def lag_names(history: int) -> tuple[list[str], list[str]]:
    return [f"y_{k}" for k in range(1, history + 1)], [f"p_{k}" for k in range(1, history + 1)]


def forecast_rows(
    panel: pl.DataFrame, origins: list[datetime], horizon: int, history: int, period: str, targets: bool = True
) -> pl.DataFrame:
    """One row per (item, origin, h in 1..horizon): the item's last ``history`` periods before the
    origin as lag columns (null before its first sale), the target period, its price, and the
    target's units (``units``; null when the target lies beyond the data, or without ``targets``).

    Only items with at least one period before the origin get rows; a row's target period must be in
    the panel (an item that stopped being listed still has its zero periods up to the data's end).
    """
    step = PERIODS[period]
    ys, ps = lag_names(history)
    wide = panel.sort("item_id", "period").with_columns(
        *(pl.col("units").shift(k).over("item_id").alias(y) for k, y in enumerate(ys, 1)),
        *(pl.col("price").shift(k).over("item_id").alias(p) for k, p in enumerate(ps, 1)),
        pl.col("period").shift(1).over("item_id").alias("_previous"),
    )
    parts = []
    for origin in origins:
        at = wide.filter(pl.col("period") == origin).filter(pl.col("_previous").is_not_null())
        # The category's price level just before the origin: the median last price of its items.
        at = at.with_columns(pl.col("p_1").median().over("category").alias("category_price"))
        base = at.select(
            "item_id",
            "category",
            "category_price",
            *ys,
            *ps,
            pl.lit(origin).cast(panel["period"].dtype).alias("origin"),
        )
        for h in range(1, horizon + 1):
            target = origin + step * (h - 1)
            # The target's price is the shop's list price then (its decision, known ahead), never the
            # mean price paid, which moves with the order mix (quantity discounts) and would leak
            # the demand it is meant to explain; without a list price, the last price before.
            tgt = panel.filter(pl.col("period") == target).select("item_id", "list_price", "units")
            rows = (
                base.join(tgt, on="item_id", how="inner")
                .with_columns(pl.coalesce("list_price", "p_1").alias("price"))
                .drop("list_price")
                .with_columns(
                    pl.lit(h).cast(pl.Int32).alias("h"),
                    pl.lit(target).cast(panel["period"].dtype).alias("target_period"),
                )
            )
            parts.append(rows)
    if not parts:
        raise BadInput("no forecasting origins inside the data")
    out = pl.concat(parts, how="vertical_relaxed")
    if not targets:
        out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias("units"))
    return out.sort("origin", "item_id", "h")


def origins_between(first: datetime, last: datetime, period: str, stride: int = 1) -> list[datetime]:
    """Every ``stride``-th period start in [first, last]."""
    step, out, t = PERIODS[period] * stride, [], first
    while t <= last:
        out.append(t)
        t += step
    return out


def backtest_origins(end: datetime, period: str, origins: int, horizon: int, step: int) -> list[datetime]:
    """Rolling origins, oldest first: the last one leaves exactly ``horizon`` periods before ``end``
    (the first period the data does not hold), each earlier one ``step`` periods before the next."""
    p = PERIODS[period]
    last = end - p * horizon
    return [last - p * step * k for k in reversed(range(origins))]


def item_classes(panel: pl.DataFrame, before: datetime, intermittent_adi: float = 1.32) -> dict[str, str]:
    """fast / slow / intermittent per item, from its periods before ``before``: intermittent when the
    average interval between periods with demand is at least ``intermittent_adi`` (Syntetos and
    Boylan's cut), else fast or slow by mean demand against the median of the non-intermittent items."""
    part = panel.filter(pl.col("period") < before)
    stats = part.group_by("item_id").agg(
        pl.len().alias("n"), (pl.col("units") > 0).sum().alias("nonzero"), pl.col("units").clip(0).mean().alias("mean")
    )
    stats = stats.with_columns((pl.col("n") / pl.col("nonzero").clip(1)).alias("adi"))
    regular = stats.filter(pl.col("adi") < intermittent_adi)
    median = float(regular["mean"].cast(pl.Float64).median() or 0.0) if regular.height else 0.0  # type: ignore[arg-type]
    out = {}
    for item, adi, mean in stats.select("item_id", "adi", "mean").iter_rows():
        out[item] = "intermittent" if adi >= intermittent_adi else ("fast" if mean >= median else "slow")
    return out


def as_arrays(rows: pl.DataFrame, history: int) -> tuple[np.ndarray, np.ndarray]:
    """The lag columns as (units, prices) matrices, column 0 the most recent period."""
    ys, ps = lag_names(history)
    return rows.select(ys).to_numpy().astype(np.float64), rows.select(ps).to_numpy().astype(np.float64)


def next_origin(panel: pl.DataFrame, period: str) -> datetime:
    """The first period the panel does not hold: where a forecast made now starts."""
    return last_period(panel) + PERIODS[period]


def first_period(panel: pl.DataFrame) -> datetime:
    return _when(panel["period"].min())


def last_period(panel: pl.DataFrame) -> datetime:
    return _when(panel["period"].max())


def _when(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise BadInput(f"the demand panel has no periods (got {value!r})")
    return value


def rows_at(panel: pl.DataFrame, origin: datetime, horizon: int, history: int, period: str) -> pl.DataFrame:
    """Forecasting rows at ``origin`` beyond the panel's last period, for every item: the periods up
    to the last step are added with unknown units and the item's latest list price (the price it
    would be sold at unless the caller names another)."""
    step = PERIODS[period]
    last = (
        panel.sort("period")
        .group_by("item_id", maintain_order=True)
        .agg(
            pl.col("category").last(),
            pl.col("period").max().alias("_last"),
            pl.coalesce(pl.col("list_price").drop_nulls().last(), pl.col("price").drop_nulls().last()).alias(
                "list_price"
            ),
        )
    )
    dtype = panel["period"].dtype
    end = origin + step * (horizon - 1)
    future = (
        last.with_columns(
            pl.datetime_ranges(pl.col("_last") + step, pl.lit(end).cast(dtype), interval=f"{step.days}d").alias(
                "period"
            )
        )
        .explode("period")
        .drop_nulls("period")
        .select(
            "item_id",
            "category",
            pl.col("period").cast(dtype),
            pl.lit(None, dtype=pl.Float64).alias("units"),
            pl.lit(0.0).alias("returned"),
            pl.col("list_price").alias("price"),
            "list_price",
            pl.lit(False).alias("sold"),
        )
    )
    extended = pl.concat([panel, future], how="vertical_relaxed")
    return forecast_rows(extended, [origin], horizon, history, period, targets=False)
