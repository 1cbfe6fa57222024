"""The canonical data model every source is converted into.

Events are partitioned by UTC event date (``event_date=YYYY-MM-DD``); the catalog is partitioned the
same way, each partition holding the items declared or seen in that interval.
"""

from __future__ import annotations

import polars as pl

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")

EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "event_time": pl.Datetime("us", "UTC"),
    "user_id": pl.String(),
    "session_id": pl.String(),
    "item_id": pl.String(),
    "event_type": pl.String(),
    "price": pl.Float64(),
    "quantity": pl.Int32(),
}

CATALOG_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "category": pl.String(),
    "brand": pl.String(),
    "price": pl.Float64(),
}

EVENT_COLUMNS: tuple[str, ...] = tuple(EVENTS_SCHEMA)
CATALOG_COLUMNS: tuple[str, ...] = tuple(CATALOG_SCHEMA)

# Stable row order for written partitions, so that re-ingesting an interval gives identical files.
EVENTS_SORT_KEY: tuple[str, ...] = ("event_time", "user_id", "session_id", "item_id", "event_type")

PARTITION_FILE = "part-0.parquet"


def partition_dir_name(day: str) -> str:
    """Folder name of one event-date partition (Hive style, readable by Spark, DuckDB, polars)."""
    return f"event_date={day}"
