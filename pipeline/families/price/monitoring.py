"""How the price family's served forecasts are judged and its inputs watched.

The service logs each forecast as ``item|target period start|period days`` with the forecast
units (``service.PriceService``). ``outcomes`` joins every logged forecast with the units that
item sold in its target period (purchases minus returns), so the online WAPE of a day is computed
once that day's target periods are in the data, as ``horizon_hours`` says (provisional before).
Drift: the day's demand and price per item against the champion's training periods. Skew: the
snapshot's daily sales against the same recomputed from the dataset.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.data.drift import FeatureDrift, FeatureSkew, numeric_drift
from pipeline.families.price.demand import daily_sales, last_period
from pipeline.families.spec import Monitoring

REFERENCE_PERIODS = 14  # the champion's last training periods its inputs are compared with
ITEMS_PER_REQUEST = 20


def outcomes(answers: pl.DataFrame, events: pl.DataFrame, policy) -> pl.DataFrame:
    """One row per served forecast: its units and what the item sold in that period."""
    served = answers.explode("items", "scores").rename({"scores": "forecast"})
    parts = served["items"].str.split("|")
    served = served.with_columns(
        parts.list.get(0).alias("item_id"),
        parts.list.get(1, null_on_oob=True)
        .str.to_datetime("%Y-%m-%d", time_zone="UTC", time_unit="us")
        .alias("target"),
        parts.list.get(2, null_on_oob=True).cast(pl.Int64, strict=False).fill_null(1).alias("days"),
    ).drop_nulls("target")
    sales = daily_sales(events).select("item_id", "day", (pl.col("bought") - pl.col("returned")).alias("units"))
    joined = (
        served.with_row_index("_row")
        .join(sales, on="item_id", how="left")
        .with_columns(
            pl.when(
                (pl.col("day") >= pl.col("target"))
                & (pl.col("day") < pl.col("target") + pl.duration(days=pl.col("days")))
            )
            .then(pl.col("units"))
            .otherwise(0.0)
            .alias("units")
        )
        .group_by("_row", maintain_order=True)
        .agg(
            pl.col("request_id", "ts", "model_version", "role", "item_id", "target", "forecast").first(),
            pl.col("units").sum(),
        )
    )
    return joined.select(
        "request_id",
        "ts",
        pl.col("item_id").alias("user_id"),  # the bootstrap's clusters: items
        "model_version",
        "role",
        "item_id",
        pl.col("target").dt.strftime("%Y-%m-%d").alias("target"),
        pl.col("forecast").cast(pl.Float64),
        pl.col("units").fill_null(0.0).alias("actual"),
        (pl.col("forecast") - pl.col("units").fill_null(0.0)).abs().alias("abs_error"),
    )


def figures(outcomes: pl.DataFrame, policy) -> dict[str, float]:
    actual = outcomes["actual"].to_numpy().astype(float)
    forecast = outcomes["forecast"].to_numpy().astype(float)
    total = float(np.abs(actual).sum())
    return {
        "wape": float(np.abs(actual - forecast).sum() / total) if total > 0 else float("nan"),
        "bias": float((forecast - actual).sum() / total) if total > 0 else float("nan"),
        "units": float(actual.sum()),
        "forecast_units": float(forecast.sum()),
        "users": float(outcomes["item_id"].n_unique()),  # items: what min_users counts here
        "forecasts": float(len(actual)),
    }


def statistic(frame: pl.DataFrame):
    """WAPE at the given rows: their absolute errors over their actual units."""
    actual = np.abs(frame["actual"].to_numpy().astype(float))

    def wape(values: np.ndarray, rows: np.ndarray) -> float:
        total = actual[rows].sum()
        return float(values.sum() / total) if total > 0 else float("nan")

    return wape


def _day_table(events: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    sales = daily_sales(events, start, end)
    return sales.select(
        "item_id",
        (pl.col("bought") - pl.col("returned")).alias("units"),
        pl.when(pl.col("paid_units") > 0).then(pl.col("paid") / pl.col("paid_units")).alias("price"),
    )


def drift(
    events: pl.DataFrame, catalog: pl.DataFrame, start: datetime, end: datetime, champion: dict, policy
) -> list[FeatureDrift]:
    """Units and price per item of the day against those of the champion's last training periods,
    each as a ratio to the item's own training mean (so a shop's mix of cheap and dear items does not
    read as drift), over the champion's items."""
    panel = pl.read_parquet(Path(champion["features_path"]) / "panel.parquet")
    valid_end = datetime.fromisoformat(champion["params"]["split.valid_end"])
    reference = panel.filter(pl.col("period") < valid_end)
    reference = reference.filter(pl.col("period") >= last_period(reference) - timedelta(days=REFERENCE_PERIODS))
    days = int(champion["params"].get("data.period") == "week") * 6 + 1
    means = reference.group_by("item_id").agg(
        pl.col("units").mean().alias("_units"), pl.col("price").mean().alias("_price")
    )
    # Every champion item, a day without sales included (0 units, no price), as its training periods.
    current = means.join(_day_table(events, start, end), on="item_id", how="left").with_columns(
        pl.col("units").fill_null(0.0)
    )
    ref = reference.join(means, on="item_id")
    # A day's units scaled to a period's (x days per period), over the item's training mean.
    pairs = (
        (
            "units_vs_item_mean",
            ref["units"] / ref["_units"].clip(1e-9),
            current["units"] * days / current["_units"].clip(1e-9),
        ),
        ("price_vs_item_mean", ref["price"] / ref["_price"], current["price"] / current["_price"]),
    )
    return [
        numeric_drift(name, a.drop_nulls().to_numpy(), b.drop_nulls().to_numpy(), policy.psi_threshold)
        for name, a, b in pairs
    ]


def served_scores(answers: pl.DataFrame) -> np.ndarray:
    return answers.select(pl.col("scores").explode()).to_series().drop_nulls().to_numpy()


def skew(snapshot, events: pl.DataFrame, catalog: pl.DataFrame, answers: pl.DataFrame) -> list[FeatureSkew]:
    """The snapshot's daily sales of the day's forecast items (all of them without a log) against
    the same recomputed from the dataset up to the snapshot's cutoff."""
    served = snapshot.tables["sales"]
    items = answers.explode("items").select(pl.col("items").str.split("|").list.get(0).alias("item_id")).unique()
    if items.height:
        served = served.join(items, on="item_id", how="semi")
    offline = daily_sales(events, end=snapshot.cutoff).join(served.select("item_id").unique(), on="item_id", how="semi")
    keys = ["item_id", "day"]
    both = served.join(offline, on=keys, how="full", coalesce=True, suffix="_offline").fill_null(0.0)
    differs = ~np.isclose(both["bought"].to_numpy(), both["bought_offline"].to_numpy()) | ~np.isclose(
        both["returned"].to_numpy(), both["returned_offline"].to_numpy()
    )
    skewed = both.filter(pl.Series(differs))
    example = ""
    if skewed.height:
        r = skewed.row(0, named=True)
        example = (
            f"item {r['item_id']} on {r['day']:%Y-%m-%d}: served {r['bought']:g} bought, "
            f"offline {r['bought_offline']:g}"
        )
    return [FeatureSkew("daily_units", both["item_id"].n_unique(), skewed["item_id"].n_unique(), example)]


def requests(events: pl.DataFrame) -> list[tuple[str, dict]]:
    """(event time, body) per hour of the day: a forecast of the items viewed in that hour (those
    the model does not forecast are skipped and listed, not refused)."""
    # Items viewed, not bought: requests chosen by their own outcome would judge the model on the
    # items that happened to sell.
    bought = events.filter(pl.col("event_type") == "view").with_columns(
        pl.col("event_time").dt.truncate("1h").alias("hour")
    )
    hours = bought.group_by("hour").agg(pl.col("item_id").unique().sort().head(ITEMS_PER_REQUEST)).sort("hour")
    return [
        (r["hour"].isoformat(), {"item_ids": r["item_id"], "skip_unknown": True}) for r in hours.iter_rows(named=True)
    ]


MONITORING = Monitoring(
    outcomes=outcomes,
    figures=figures,
    headline=lambda policy: ("wape", "bias", "units", "forecast_units"),
    drift=drift,
    served_scores=served_scores,
    skew=skew,
    requests=requests,
    value_column="abs_error",
    pair_keys=("request_id", "item_id", "target"),
    statistic=statistic,
    protocol=lambda policy: "served forecasts against the units each item sold in its target period",
)
