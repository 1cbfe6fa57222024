"""The canonical data model every source is converted into.

Events are partitioned by UTC event date (``event_date=YYYY-MM-DD``); the catalog is partitioned the
same way, each partition holding the items declared or seen in that interval.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

# ``return``: units of an earlier purchase given back (a cancelled invoice); ``quantity`` counts them.
# ``signup``: the user's account was created (no item). ``chargeback``: the payment of an order (the
# purchases of ``session_id``) was disputed as fraud, confirmed at ``event_time``, often weeks after
# the order; ``price`` is the amount charged back, ``item_id`` the line when the source names one.
EVENT_TYPES: tuple[str, ...] = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "return",
    "signup",
    "chargeback",
)
# Event types that need no item: the item checks (missing item_id, unknown item) skip them.
ITEMLESS_EVENT_TYPES: tuple[str, ...] = ("signup", "chargeback")

EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "event_time": pl.Datetime("us", "UTC"),
    "user_id": pl.String(),
    "session_id": pl.String(),
    "item_id": pl.String(),
    "event_type": pl.String(),
    "price": pl.Float64(),
    "quantity": pl.Int32(),
    # Optional risk context (null where a source has none): the device, network address, country
    # and payment instrument (a fingerprint, never the card number) the event came from.
    "device_id": pl.String(),
    "ip": pl.String(),
    "country": pl.String(),
    "payment_id": pl.String(),
}

CATALOG_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "category": pl.String(),
    "brand": pl.String(),
    "price": pl.Float64(),
}

EVENT_COLUMNS: tuple[str, ...] = tuple(EVENTS_SCHEMA)
# The columns a source may leave out: absent, they are null.
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("device_id", "ip", "country", "payment_id")
CATALOG_COLUMNS: tuple[str, ...] = tuple(CATALOG_SCHEMA)

# Stable row order for written partitions, so that re-ingesting an interval gives identical files.
EVENTS_SORT_KEY: tuple[str, ...] = ("event_time", "user_id", "session_id", "item_id", "event_type")

PARTITION_FILE = "part-0.parquet"


def partition_dir_name(day: str) -> str:
    """Folder name of one event-date partition (Hive style, readable by Spark, DuckDB, polars)."""
    return f"event_date={day}"


_PARTITION_DIR = re.compile(r"event_date=(\d{4}-\d{2}-\d{2})(\.replaced)?")


def partition_files(table: Path) -> list[Path]:
    """The data files of the complete partitions under ``table`` (``events/`` or ``catalog/``), by day.

    A publish replaces ``event_date=D`` by renaming it to ``event_date=D.replaced`` and renaming the
    new ``event_date=D.incoming`` into its place (``data.version.publish_partition``). Whatever
    moment a publish is killed, each day is read exactly once, from a complete folder:
    ``event_date=D`` when it exists, else ``event_date=D.replaced`` (killed between the two renames:
    the last published rows); ``.incoming`` never.
    """
    if not table.is_dir():
        return []
    chosen: dict[str, Path] = {}
    for folder in table.iterdir():
        match = _PARTITION_DIR.fullmatch(folder.name)
        if match is None or not (folder / PARTITION_FILE).is_file():
            continue
        day, replaced = match.groups()
        if not replaced or day not in chosen:
            chosen[day] = folder / PARTITION_FILE
    return [chosen[day] for day in sorted(chosen)]


def partition_day(data_file: Path) -> str:
    """``YYYY-MM-DD`` of a file that ``partition_files`` returned."""
    found = _PARTITION_DIR.fullmatch(data_file.parent.name)
    if found is None:
        raise ValueError(f"{data_file}: not in a partition folder (date=YYYY-MM-DD)")
    return found.group(1)
