"""The purchase-propensity family's features: per (user, item) aggregates before a cutoff, a label after it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.params import TrainPropensityParams
from pipeline.data.dataset import SEQUENCE_EVENT_TYPES, Dataset, TimeSplit, catalog_as_of, split_by_time
from pipeline.families.featureset import read_manifest

PROPENSITY_DENSE = (
    "ui_views",
    "ui_carts",
    "ui_removes",
    "ui_purchases",
    "ui_hours_since_last",
    "u_events",
    "u_sessions",
    "u_purchases",
    "u_hours_since_last",
    "u_purchase_rate",
    "i_views",
    "i_purchases",
    "i_purchase_rate",
    "price",
    "price_vs_user_avg",
    "u_category_affinity",
    # Time-decayed counts (each event weighs 0.5 ** (age / half-life)): what happened yesterday
    # matters more than what happened last month, with one half-life for the day and one for the week.
    "ui_events_1d",
    "ui_events_7d",
    "ui_purchases_7d",
    "u_events_1d",
    "u_events_7d",
    "i_views_1d",
    "i_purchases_7d",
    # Sequence position: how many other items the user touched since this one (0: the last item).
    "ui_recency_rank",
)
PROPENSITY_IDS = ("item_idx", "category_idx", "brand_idx")
NEVER_TOUCHED_RANK = 1000.0


@dataclass(frozen=True)
class Vocab:
    """String value <-> index; 0 is reserved for unknown or missing values."""

    values: tuple[str, ...]

    @classmethod
    def of(cls, series: pl.Series) -> Vocab:
        return cls(tuple(series.drop_nulls().unique().sort().to_list()))

    @property
    def size(self) -> int:
        return len(self.values) + 1

    def encode_expr(self, column: str) -> pl.Expr:
        mapping = dict(zip(self.values, range(1, self.size), strict=True))
        return pl.col(column).replace_strict(mapping, default=0, return_dtype=pl.Int64)


def propensity_tables(
    past: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime, candidates: pl.DataFrame | None = None
) -> dict[str, pl.DataFrame]:
    """The aggregates that propensity features are read from, as of ``cutoff``.

    ``past`` holds only events before the cutoff. With ``candidates`` (user_id, item_id) the user
    tables are restricted to those users and pairs; without, they cover everyone, which is the
    serving snapshot (``pipeline.serving.snapshot``) that answers any (user, item) later.
    """
    # Shopping events only: a signup or a chargeback (item-less, of the risk side) is not browsing.
    past = past.filter(pl.col("item_id").is_not_null())
    hours = (pl.lit(cutoff) - pl.col("event_time").max()).dt.total_seconds() / 3600.0
    is_type = {
        t: (pl.col("event_type") == t).sum().cast(pl.Float64)
        for t in ("view", "add_to_cart", "remove_from_cart", "purchase")
    }
    age_days = (pl.lit(cutoff) - pl.col("event_time")).dt.total_seconds() / 86400.0

    def decayed(half_life_days: float, event_type: str | None = None) -> pl.Expr:
        weight = pl.lit(0.5).pow(age_days / half_life_days)
        return (weight if event_type is None else weight.filter(pl.col("event_type") == event_type)).sum()

    pairs = past if candidates is None else past.join(candidates, on=["user_id", "item_id"], how="semi")
    user_item = pairs.group_by("user_id", "item_id").agg(
        is_type["view"].alias("ui_views"),
        is_type["add_to_cart"].alias("ui_carts"),
        is_type["remove_from_cart"].alias("ui_removes"),
        is_type["purchase"].alias("ui_purchases"),
        hours.alias("ui_hours_since_last"),
        decayed(1.0).alias("ui_events_1d"),
        decayed(7.0).alias("ui_events_7d"),
        decayed(7.0, "purchase").alias("ui_purchases_7d"),
    )
    users = past if candidates is None else past.join(candidates.select("user_id").unique(), on="user_id", how="semi")
    user = (
        users.group_by("user_id")
        .agg(
            pl.len().cast(pl.Float64).alias("u_events"),
            pl.col("session_id").n_unique().cast(pl.Float64).alias("u_sessions"),
            is_type["purchase"].alias("u_purchases"),
            hours.alias("u_hours_since_last"),
            pl.col("price").filter(pl.col("event_type") == "purchase").mean().alias("u_avg_purchase_price"),
            decayed(1.0).alias("u_events_1d"),
            decayed(7.0).alias("u_events_7d"),
        )
        .with_columns((pl.col("u_purchases") / pl.col("u_sessions")).alias("u_purchase_rate"))
    )
    # Over all of the user's items (not only the candidates), so that training rows and the serving
    # snapshot (which knows every pair) rank an item alike; removals are not a step of the sequence.
    recency = (
        users.filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
        .group_by("user_id", "item_id")
        .agg(pl.col("event_time").max().alias("_last"))
        .with_columns(
            (pl.col("_last").rank("min", descending=True).over("user_id") - 1).cast(pl.Float64).alias("ui_recency_rank")
        )
        .drop("_last")
    )
    item = past.group_by("item_id").agg(
        is_type["view"].alias("i_views"),
        is_type["purchase"].alias("i_purchases"),
        pl.col("price").drop_nulls().last().alias("event_price"),
        decayed(1.0, "view").alias("i_views_1d"),
        decayed(7.0, "purchase").alias("i_purchases_7d"),
    )
    item = item.with_columns((pl.col("i_purchases") / (pl.col("i_views") + 1.0)).alias("i_purchase_rate"))
    categories = catalog.select("item_id", "category", "brand", pl.col("price").alias("catalog_price"))
    affinity = (
        users.join(categories.select("item_id", "category"), on="item_id", how="left")
        .group_by("user_id", "category")
        .len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("user_id")).alias("u_category_affinity"))
        .drop("len")
    )
    return {
        "user_item": user_item,
        "user": user,
        "item": item,
        "catalog": categories,
        "affinity": affinity,
        "recency": recency,
    }


def assemble_propensity(candidates: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Feature rows for (user_id, item_id) candidates, in the candidates' order, from ``propensity_tables``.

    A user or item the tables do not know gets zero counts (and ``price_vs_user_avg`` 1.0), the same
    values a candidate without history gets in training, never an error.
    """
    rows = (
        candidates.with_row_index("_order")
        .join(tables["user_item"], on=["user_id", "item_id"], how="left")
        .join(tables["recency"], on=["user_id", "item_id"], how="left")
        .join(tables["user"], on="user_id", how="left")
        .join(tables["item"], on="item_id", how="left")
        .join(tables["catalog"], on="item_id", how="left")
        .join(tables["affinity"], on=["user_id", "category"], how="left", nulls_equal=True)
    )
    price = pl.coalesce("catalog_price", "event_price")
    return (
        rows.with_columns(
            price.fill_null(0.0).alias("price"),
            # 1.0 (no information) when the user never paid anything: free items exist in real shops.
            pl.when(pl.col("u_avg_purchase_price") > 0)
            .then(price / pl.col("u_avg_purchase_price"))
            .otherwise(1.0)
            .fill_null(1.0)
            .alias("price_vs_user_avg"),
            pl.col("u_category_affinity").fill_null(0.0),
            # An item the user never touched is further back than any they did.
            pl.col("ui_recency_rank").fill_null(NEVER_TOUCHED_RANK),
        )
        .with_columns(pl.col(c).fill_null(0.0) for c in PROPENSITY_DENSE)
        .sort("_order")
        .drop("_order")
    )


def propensity_rows(
    events: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime, horizon: timedelta, lookback: timedelta
) -> pl.DataFrame:
    """Candidates (user, item) at ``cutoff`` with features from before it and a label after it.

    Candidates are the items a user viewed, carted or bought in the ``lookback`` before the cutoff
    (bought, because buying again is what a replenishment shop's propensity is about); the label is
    whether the user bought that item within ``horizon`` after it. Features use only events before
    the cutoff, so nothing leaks from the label window.
    """
    past = events.filter(pl.col("event_time") < cutoff)
    recent = past.filter((pl.col("event_time") >= cutoff - lookback) & pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
    candidates = recent.select("user_id", "item_id").unique().sort("user_id", "item_id")
    future = (
        events.filter(
            (pl.col("event_time") >= cutoff)
            & (pl.col("event_time") < cutoff + horizon)
            & (pl.col("event_type") == "purchase")
        )
        .select("user_id", "item_id")
        .unique()
    )
    rows = assemble_propensity(candidates, propensity_tables(past, catalog, cutoff, candidates))
    return rows.join(
        future.with_columns(pl.lit(1.0).alias("label")), on=["user_id", "item_id"], how="left", maintain_order="left"
    ).with_columns(pl.col("label").fill_null(0.0), pl.lit(cutoff).alias("cutoff"))


@dataclass
class PropensityFeatures:
    """The propensity rows of each period and the vocabularies their ids are encoded with."""

    split: TimeSplit
    train_rows: pl.DataFrame
    valid_rows: pl.DataFrame
    test_rows: pl.DataFrame
    vocabs: dict[str, Vocab]
    counts: dict[str, int]


def propensity_cutoffs(split: TimeSplit, params: TrainPropensityParams) -> list:
    """Training cutoffs: every ``cutoff_stride_days`` from ``lookback_days`` into the data, each with
    its whole ``horizon_days`` label window inside the training period (the same horizon for all)."""
    horizon = timedelta(days=params.horizon_days)
    cutoffs, cutoff = [], split.start + timedelta(days=params.lookback_days)
    while cutoff + horizon <= split.train_end:
        cutoffs.append(cutoff)
        cutoff += timedelta(days=params.cutoff_stride_days)
    if not cutoffs:
        days = (split.train_end - split.start).days
        raise BadInput(
            f"the training period ({days} day(s)) is shorter than the {params.lookback_days}-day "
            f"lookback plus the {params.horizon_days}-day label horizon"
        )
    return cutoffs


def propensity_features(
    events: pl.DataFrame, catalog: pl.DataFrame, params: TrainPropensityParams
) -> PropensityFeatures:
    """Training rows from cutoffs every ``cutoff_stride_days`` of the training period (features
    before each cutoff, label within ``horizon_days`` after it, inside the training period);
    validation rows from ``train_end`` (early stopping and calibration); test rows from
    ``valid_end``.

    Point in time: each cutoff sees the catalog as it was known then (``catalog`` is a
    ``catalog_history``), and the id vocabularies come from the training period only.
    """
    split = split_by_time(events, params.valid_days, params.test_days)
    horizon, lookback = timedelta(days=params.horizon_days), timedelta(days=params.lookback_days)
    cutoffs = propensity_cutoffs(split, params)

    def rows_at(cutoff):
        return propensity_rows(events, catalog_as_of(catalog, cutoff), cutoff, horizon, lookback)

    train_rows = pl.concat([rows_at(c) for c in cutoffs])
    valid_rows, test_rows = rows_at(split.train_end), rows_at(split.valid_end)
    for name, rows in (("training", train_rows), ("validation", valid_rows), ("test", test_rows)):
        if rows.height == 0 or rows["label"].n_unique() < 2:
            raise BadInput(f"the {name} rows have a single label; AUC is undefined (more days of data needed)")
    past = events.filter(pl.col("event_time") < split.train_end)
    known = catalog_as_of(catalog, split.train_end)
    vocabs = {
        "item_idx": Vocab.of(past["item_id"]),
        "category_idx": Vocab.of(known["category"]),
        "brand_idx": Vocab.of(known["brand"]),
    }
    counts = {
        "cutoffs": len(cutoffs),
        "train_rows": train_rows.height,
        "valid_rows": valid_rows.height,
        "test_rows": test_rows.height,
    }
    return PropensityFeatures(split, train_rows, valid_rows, test_rows, vocabs, counts)


def write_features(out: Path, dataset: Dataset, params: TrainPropensityParams):
    """The family's feature files: ``train.parquet``, ``valid.parquet``, ``test.parquet`` and
    ``vocabs.json``."""
    f = propensity_features(dataset.events(), dataset.catalog_history(), params)
    for name, rows in (("train", f.train_rows), ("valid", f.valid_rows), ("test", f.test_rows)):
        rows.write_parquet(out / f"{name}.parquet")
    (out / "vocabs.json").write_text(json.dumps({k: list(v.values) for k, v in f.vocabs.items()}))
    return f.counts, f.split


def load_features(folder: Path) -> PropensityFeatures:
    manifest = read_manifest(folder, "purchase_propensity")
    folder = Path(folder)
    vocabs = {k: Vocab(tuple(v)) for k, v in json.loads((folder / "vocabs.json").read_text()).items()}
    return PropensityFeatures(
        TimeSplit.from_dict(manifest["split"]),
        pl.read_parquet(folder / "train.parquet"),
        pl.read_parquet(folder / "valid.parquet"),
        pl.read_parquet(folder / "test.parquet"),
        vocabs,
        manifest["counts"],
    )
