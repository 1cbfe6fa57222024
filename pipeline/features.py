"""Features for the models: a time-based split and next-item sequences.

The split is by event time, never random: train is everything before ``train_end``, validation the
next ``valid_days``, test the last ``test_days`` of the data. Cut points are recorded with the data
so that every evaluation of a model (and of the champion it may replace) uses the same frozen test.

Items are indexed from 2: index 0 pads a short history and index 1 stands for any item not seen in
training (a new item), so unknown ids are a value, not a crash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

PAD, UNKNOWN = 0, 1
# Interactions that say something about what a user wants next; removals say the opposite.
SEQUENCE_EVENT_TYPES = ("view", "add_to_cart", "purchase")


@dataclass(frozen=True)
class TimeSplit:
    """Cut points of a time-based split; each period is [start, end)."""

    start: datetime
    train_end: datetime
    valid_end: datetime
    end: datetime

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> TimeSplit:
        return cls(**{k: datetime.fromisoformat(v) for k, v in data.items()})


def load_events(canonical: Path) -> pl.DataFrame:
    """All published events of the canonical dataset, in time order."""
    files = sorted((canonical / "events").glob("event_date=*/part-0.parquet"))
    if not files:
        raise FileNotFoundError(f"no published event partitions under {canonical / 'events'}")
    return pl.concat([pl.read_parquet(f) for f in files]).sort("event_time", "user_id", "session_id")


def split_by_time(events: pl.DataFrame, valid_days: int, test_days: int) -> TimeSplit:
    """Cut the data's whole days into train | validation | test.

    Raises:
        ValueError: the data spans too few days to leave at least one for training.
    """
    first = events["event_time"].min()
    last = events["event_time"].max()
    start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    end = datetime(last.year, last.month, last.day, tzinfo=timezone.utc) + timedelta(days=1)
    valid_end = end - timedelta(days=test_days)
    train_end = valid_end - timedelta(days=valid_days)
    if train_end <= start:
        days = (end - start).days
        raise ValueError(f"the data spans {days} day(s): too few for {valid_days} validation and "
                         f"{test_days} test day(s) plus at least one training day")
    return TimeSplit(start, train_end, valid_end, end)


@dataclass(frozen=True)
class ItemVocab:
    """Item id <-> index; ids unseen in training map to UNKNOWN."""

    ids: tuple[str, ...]

    @classmethod
    def from_events(cls, events: pl.DataFrame) -> ItemVocab:
        return cls(tuple(events["item_id"].unique().sort().to_list()))

    @property
    def size(self) -> int:
        """Number of indices, the two reserved ones included."""
        return len(self.ids) + 2

    def encode(self, item_ids: pl.Series) -> np.ndarray:
        mapping = pl.DataFrame({"item_id": list(self.ids), "idx": np.arange(2, self.size, dtype=np.int64)})
        frame = pl.DataFrame({"item_id": item_ids.cast(pl.String)}).join(
            mapping, on="item_id", how="left", maintain_order="left")
        return frame["idx"].fill_null(UNKNOWN).to_numpy()

    def decode(self, indices: np.ndarray) -> list[str | None]:
        return [self.ids[i - 2] if i >= 2 else None for i in np.asarray(indices).tolist()]


@dataclass
class NextItemExamples:
    """Histories (left-padded to ``max_len``) and the item that came next, for evaluation."""

    users: list[str]
    histories: np.ndarray  # [n, max_len] int64
    targets: np.ndarray    # [n] int64


def collapse_repeats(steps: pl.DataFrame) -> pl.DataFrame:
    """Drop each step whose item repeats the same user's previous step: a view followed by an
    add_to_cart of the same item is one step, not two. ``steps`` is sorted by user and time.

    The one definition for training (``user_sequences``) and serving (the snapshot's histories).
    It compares raw item ids, never vocabulary indices, so two different unseen items in a row stay
    two "unknown" steps in both.
    """
    previous_item, previous_user = pl.col("item_id").shift(1), pl.col("user_id").shift(1)
    return steps.filter((pl.col("item_id") != previous_item) | (pl.col("user_id") != previous_user)
                        | previous_item.is_null())


def user_sequences(events: pl.DataFrame, vocab: ItemVocab, before: datetime) -> dict[str, np.ndarray]:
    """Each user's item indices before ``before``, in time order, repeats in a row collapsed."""
    frame = collapse_repeats(events.filter(
        (pl.col("event_time") < before) & pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES)
    ).select("user_id", "event_time", "item_id").sort("user_id", "event_time"))
    frame = frame.with_columns(pl.Series("idx", vocab.encode(frame["item_id"])))
    grouped = frame.group_by("user_id", maintain_order=True).agg(pl.col("idx"))
    return {u: np.asarray(s, dtype=np.int64) for u, s in zip(grouped["user_id"], grouped["idx"], strict=True)}


def left_pad(seq: np.ndarray, max_len: int) -> np.ndarray:
    out = np.zeros(max_len, dtype=np.int64)
    tail = seq[-max_len:]
    if tail.size:
        out[-tail.size:] = tail
    return out


def next_item_examples(
    events: pl.DataFrame,
    vocab: ItemVocab,
    histories: dict[str, np.ndarray],
    history_end: datetime,
    window_end: datetime,
    max_len: int,
) -> tuple[NextItemExamples, int]:
    """For each user active in [history_end, window_end): their history, and their first new item.

    ``histories`` is ``user_sequences(events, vocab, history_end)``, which the caller also needs to
    train or to build baselines, so it is passed in rather than computed again.

    The target is the user's first item in the window that differs from the last item of their
    history. Targets that are new items (unknown to the model) cannot be ranked by any model and
    are left out; their count is returned beside the examples.
    """
    window = events.filter(
        (pl.col("event_time") >= history_end) & (pl.col("event_time") < window_end)
        & pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES)
    ).sort("event_time")
    window = window.with_columns(pl.Series("idx", vocab.encode(window["item_id"])))
    users, hist, targets, unknown = [], [], [], 0
    for user, items in window.group_by("user_id", maintain_order=True).agg(pl.col("idx")).iter_rows():
        past = histories.get(user, np.zeros(0, dtype=np.int64))
        last = past[-1] if past.size else -1
        target = next((i for i in items if i != last), None)
        if target is None:
            continue
        if target == UNKNOWN:
            unknown += 1
            continue
        users.append(user)
        hist.append(left_pad(past, max_len))
        targets.append(target)
    examples = NextItemExamples(
        users=users,
        histories=np.stack(hist) if hist else np.zeros((0, max_len), dtype=np.int64),
        targets=np.asarray(targets, dtype=np.int64),
    )
    return examples, unknown


def training_windows(sequences: dict[str, np.ndarray], max_len: int) -> np.ndarray:
    """Training rows for a sequential model: each sequence cut into windows of ``max_len + 1``.

    Row ``r`` holds inputs ``r[:-1]`` and next-item labels ``r[1:]`` (0 where there is none).
    Long sequences give several non-overlapping windows, so no interaction is wasted.
    """
    rows = []
    for seq in sequences.values():
        if seq.size < 2:
            continue
        for end in range(seq.size, 1, -max_len):
            rows.append(left_pad(seq[max(0, end - max_len - 1):end], max_len + 1))
    return np.stack(rows) if rows else np.zeros((0, max_len + 1), dtype=np.int64)


# Purchase propensity -------------------------------------------------------------------------

PROPENSITY_DENSE = (
    "ui_views", "ui_carts", "ui_removes", "ui_purchases", "ui_hours_since_last",
    "u_events", "u_sessions", "u_purchases", "u_hours_since_last", "u_purchase_rate",
    "i_views", "i_purchases", "i_purchase_rate", "price", "price_vs_user_avg", "u_category_affinity",
)
PROPENSITY_IDS = ("item_idx", "category_idx", "brand_idx")


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


def latest_catalog(canonical: Path) -> pl.DataFrame:
    """The latest known row of every item over all catalog partitions."""
    files = sorted((canonical / "catalog").glob("event_date=*/part-0.parquet"))
    if not files:
        return pl.DataFrame(schema={"item_id": pl.String, "category": pl.String, "brand": pl.String,
                                    "price": pl.Float64})
    return pl.concat([pl.read_parquet(f) for f in files]).unique(subset="item_id", keep="last", maintain_order=True)


def propensity_tables(past: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime,
                      candidates: pl.DataFrame | None = None) -> dict[str, pl.DataFrame]:
    """The aggregates that propensity features are read from, as of ``cutoff``.

    ``past`` holds only events before the cutoff. With ``candidates`` (user_id, item_id) the user
    tables are restricted to those users and pairs; without, they cover everyone, which is the
    serving snapshot (``pipeline.serving.snapshot``) that answers any (user, item) later.
    """
    hours = (pl.lit(cutoff) - pl.col("event_time").max()).dt.total_seconds() / 3600.0
    is_type = {t: (pl.col("event_type") == t).sum().cast(pl.Float64) for t in
               ("view", "add_to_cart", "remove_from_cart", "purchase")}
    pairs = past if candidates is None else past.join(candidates, on=["user_id", "item_id"], how="semi")
    user_item = pairs.group_by("user_id", "item_id").agg(
        is_type["view"].alias("ui_views"), is_type["add_to_cart"].alias("ui_carts"),
        is_type["remove_from_cart"].alias("ui_removes"), is_type["purchase"].alias("ui_purchases"),
        hours.alias("ui_hours_since_last"),
    )
    users = past if candidates is None else past.join(candidates.select("user_id").unique(), on="user_id",
                                                      how="semi")
    user = users.group_by("user_id").agg(
        pl.len().cast(pl.Float64).alias("u_events"),
        pl.col("session_id").n_unique().cast(pl.Float64).alias("u_sessions"),
        is_type["purchase"].alias("u_purchases"), hours.alias("u_hours_since_last"),
        pl.col("price").filter(pl.col("event_type") == "purchase").mean().alias("u_avg_purchase_price"),
    ).with_columns((pl.col("u_purchases") / pl.col("u_sessions")).alias("u_purchase_rate"))
    item = past.group_by("item_id").agg(is_type["view"].alias("i_views"), is_type["purchase"].alias("i_purchases"),
                                        pl.col("price").drop_nulls().last().alias("event_price"))
    item = item.with_columns((pl.col("i_purchases") / (pl.col("i_views") + 1.0)).alias("i_purchase_rate"))
    categories = catalog.select("item_id", "category", "brand", pl.col("price").alias("catalog_price"))
    affinity = (users.join(categories.select("item_id", "category"), on="item_id", how="left")
                .group_by("user_id", "category").len()
                .with_columns((pl.col("len") / pl.col("len").sum().over("user_id")).alias("u_category_affinity"))
                .drop("len"))
    return {"user_item": user_item, "user": user, "item": item, "catalog": categories, "affinity": affinity}


def assemble_propensity(candidates: pl.DataFrame, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Feature rows for (user_id, item_id) candidates, in the candidates' order, from ``propensity_tables``.

    A user or item the tables do not know gets zero counts (and ``price_vs_user_avg`` 1.0), the same
    values a candidate without history gets in training, never an error.
    """
    rows = (candidates.with_row_index("_order")
            .join(tables["user_item"], on=["user_id", "item_id"], how="left")
            .join(tables["user"], on="user_id", how="left")
            .join(tables["item"], on="item_id", how="left")
            .join(tables["catalog"], on="item_id", how="left")
            .join(tables["affinity"], on=["user_id", "category"], how="left", nulls_equal=True))
    price = pl.coalesce("catalog_price", "event_price")
    return rows.with_columns(
        price.fill_null(0.0).alias("price"),
        # 1.0 (no information) when the user never paid anything: free items exist in real shops.
        pl.when(pl.col("u_avg_purchase_price") > 0).then(price / pl.col("u_avg_purchase_price"))
        .otherwise(1.0).fill_null(1.0).alias("price_vs_user_avg"),
        pl.col("u_category_affinity").fill_null(0.0),
    ).with_columns(pl.col(c).fill_null(0.0) for c in PROPENSITY_DENSE).sort("_order").drop("_order")


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
    recent = past.filter((pl.col("event_time") >= cutoff - lookback)
                         & pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
    candidates = recent.select("user_id", "item_id").unique().sort("user_id", "item_id")
    future = events.filter((pl.col("event_time") >= cutoff) & (pl.col("event_time") < cutoff + horizon)
                           & (pl.col("event_type") == "purchase")).select("user_id", "item_id").unique()
    rows = assemble_propensity(candidates, propensity_tables(past, catalog, cutoff, candidates))
    return rows.join(future.with_columns(pl.lit(1.0).alias("label")), on=["user_id", "item_id"], how="left",
                     maintain_order="left").with_columns(
        pl.col("label").fill_null(0.0), pl.lit(cutoff).alias("cutoff"))
