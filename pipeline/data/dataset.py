"""Reading one dataset version: its events, its catalog, and a time-based split of its days.

The split is by event time, never random: train is everything before ``train_end``, validation the
next ``valid_days``, test the last ``test_days`` of the data. Cut points are recorded with the run
(``split.json``), so every evaluation of a model (and of the champion it may replace) cuts the
same frozen test period out of the same dataset version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.schema import partition_day, partition_files

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
    files = partition_files(canonical / "events")
    if not files:
        raise FileNotFoundError(f"no published event partitions under {canonical / 'events'}")
    frames = [_with_event_columns(pl.read_parquet(f)) for f in files]
    return pl.concat(frames).sort("event_time", "user_id", "session_id")


def _with_event_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """A partition in the canonical column order; one published before the optional risk columns
    existed gets them null, so older versions of the dataset read alongside newer ones."""
    from pipeline.core.schema import EVENTS_SCHEMA

    missing = [pl.lit(None, dtype).alias(c) for c, dtype in EVENTS_SCHEMA.items() if c not in frame.columns]
    return frame.with_columns(missing).select(list(EVENTS_SCHEMA)) if missing else frame


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
        raise BadInput(
            f"the data spans {days} day(s): too few for {valid_days} validation and "
            f"{test_days} test day(s) plus at least one training day"
        )
    return TimeSplit(start, train_end, valid_end, end)


def catalog_history(canonical: Path) -> pl.DataFrame:
    """Every catalog row of every partition, with ``known_from``: the end of its partition's day,
    when that day's catalog was complete. ``catalog_as_of`` picks the rows known at a time."""
    files = partition_files(canonical / "catalog")
    if not files:
        return pl.DataFrame(
            schema={
                "item_id": pl.String,
                "category": pl.String,
                "brand": pl.String,
                "price": pl.Float64,
                "known_from": pl.Datetime("us", "UTC"),
            }
        )
    frames = []
    for f in files:
        day = datetime.fromisoformat(partition_day(f)).replace(tzinfo=timezone.utc)
        frames.append(
            pl.read_parquet(f).with_columns(
                pl.lit(day + timedelta(days=1)).cast(pl.Datetime("us", "UTC")).alias("known_from")
            )
        )
    return pl.concat(frames, how="diagonal_relaxed")


def catalog_as_of(history: pl.DataFrame, when: datetime | None = None) -> pl.DataFrame:
    """The latest row of every item known at ``when`` (all of them when None): point in time, so a
    training row never sees a price, category or brand from after its cutoff. A catalog without
    ``known_from`` (one already cut) is returned as it is."""
    if "known_from" not in history.columns:
        return history
    if when is not None:
        history = history.filter(pl.col("known_from") <= when)
    return (
        history.sort("known_from", maintain_order=True)
        .unique(subset="item_id", keep="last", maintain_order=True)
        .drop("known_from")
    )


def latest_catalog(canonical: Path) -> pl.DataFrame:
    """The latest known row of every item over all catalog partitions."""
    return catalog_as_of(catalog_history(canonical))


@dataclass(frozen=True)
class Dataset:
    """One dataset version, restored to a folder (``pipeline.data.version.open_dataset``)."""

    version: str
    path: Path  # the folder holding this version's events/ and catalog/

    def events(self) -> pl.DataFrame:
        return load_events(self.path)

    def catalog(self, as_of: datetime | None = None) -> pl.DataFrame:
        """The latest row of every item known at ``as_of`` (default: at the end of the data)."""
        return catalog_as_of(catalog_history(self.path), as_of)

    def catalog_history(self) -> pl.DataFrame:
        return catalog_history(self.path)
