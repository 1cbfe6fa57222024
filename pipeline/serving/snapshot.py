"""What a service knows about users and items, cut from one dataset version: a Bento model of parquet files.

A recommendation for a user id needs that user's recent items; a purchase probability for a
(user, item) needs the aggregates the propensity features are computed from. Each family says which
tables it needs (``ModelSpec.snapshot_tables``: built with the same functions its training uses, as
of the end of the dataset's last day), so a served feature is the feature the model learned from.
This module stores and loads them and finds rows by key; what the rows mean is the family's
(``FeatureSnapshot.view``).

A snapshot is tagged by dataset version and family and shared by every Bento of that family built on
that version. A newer dataset gets a newer snapshot with the next packaging; callers that keep their
own, fresher feature store send features (or histories) in the request instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl

from pipeline.data.dataset import catalog_history, load_events, split_by_time
from pipeline.families.spec import SnapshotTables

SNAPSHOT_MODEL = "shopml-features"
# Bump when the snapshot's layout changes, so a Bento store never reuses a snapshot of the old layout.
SNAPSHOT_FORMAT = 5  # 4: one snapshot per family, its tables and their keys named in meta.json; 5: fraud's order_keys

View = TypeVar("View")


def snapshot_model(family: str) -> str:
    """The Bento model name of a family's snapshots (a tag name allows no underscore at its ends)."""
    return f"{SNAPSHOT_MODEL}-{family.replace('_', '-')}"


def write_snapshot(tables: SnapshotTables | None, canonical: Path, dataset_version: str, out: Path) -> dict:
    """Write a family's snapshot of the canonical dataset into ``out``; returns its metadata."""
    return write_snapshot_of(tables, load_events(canonical), catalog_history(canonical), dataset_version, out)


def write_snapshot_of(
    tables: SnapshotTables | None, events: pl.DataFrame, catalog: pl.DataFrame, dataset_version: str, out: Path
) -> dict:
    """Write the tables ``tables`` builds from these events (canonical schema) and catalog (its
    history, ``known_from`` per row, or one already cut; a family cuts it with ``catalog_as_of``) as of the end of
    their last day (none for a family without: ``ModelSpec.snapshot_tables`` None), and ``meta.json``
    naming each table's key columns: the columns ``FeatureSnapshot.rows`` finds its rows by (none: a
    table the family reads whole, e.g. into a view of its own, which is not indexed)."""
    cutoff = split_by_time(events, 0, 0).end
    out.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name, (table, on) in (tables(events, catalog, cutoff) if tables is not None else {}).items():
        missing = [c for c in on if c not in table.columns]
        if missing:
            raise ValueError(f"snapshot table {name!r} has no key column {missing}; columns: {table.columns}")
        table.write_parquet(out / f"{name}.parquet")
        keys[name] = list(on)
    meta = {
        "dataset_version": dataset_version,
        "cutoff": cutoff.isoformat(),
        "events": events.height,
        "users": events["user_id"].n_unique(),
        "items": catalog["item_id"].n_unique(),
        "keys": keys,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


class RowIndex:
    """The rows of a table whose key columns equal given values, found by binary search in the
    table sorted by its key (``search_sorted``): the cost of a lookup grows with the number of
    values asked for, not with the table, and no per-row Python dict is built.

    Written here because polars has no index on a DataFrame: a join or an ``is_in`` filter scans
    the whole table on every request (10 ms of a 1,000-candidate request on the benchmark's
    snapshot, against under 1 ms for this)."""

    def __init__(self, table: pl.DataFrame, on: list[str]) -> None:
        self.on = on
        keyed = table.with_columns(self._key(on).alias("_key")).sort("_key")
        self.keys = keyed["_key"]
        self.table = keyed.drop("_key")
        self._arrays: dict[str, np.ndarray] | None = None
        self._sorted_keys = np.empty(0, dtype=str)

    @staticmethod
    def _key(on: list[str]) -> pl.Expr:
        if len(on) == 1:
            return pl.col(on[0]).cast(pl.String)
        return pl.concat_str([pl.col(c).cast(pl.String).fill_null("\x00") for c in on], separator="\x1f")

    def rows(self, values: pl.DataFrame) -> pl.DataFrame:
        """Every row whose key is one of ``values``' rows (columns ``on``), each once."""
        wanted = values.select(self._key(self.on).alias("_key"))["_key"].drop_nulls().unique().sort()
        if wanted.is_empty() or self.keys.is_empty():
            return self.table.clear()
        start = self.keys.search_sorted(wanted, side="left").to_numpy().astype(np.int64)
        end = self.keys.search_sorted(wanted, side="right").to_numpy().astype(np.int64)
        found = end > start
        if not found.any():
            return self.table.clear()
        start, end = start[found], end[found]
        lengths = end - start
        index = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return self.table[index]

    def arrays(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The rows under these keys (key strings, as ``_key`` builds them; a key's rows once per
        time it is asked for), as one numpy array per column, times as microseconds since the epoch.

        The same search as ``rows`` on numpy copies of the columns, made on first use: a request
        of a few keys then costs tens of microseconds instead of the dozen polars calls (each
        50 to 100 us of planning) that building and reading a frame takes."""
        if self._arrays is None:
            self._arrays = {
                name: (
                    column.dt.epoch("us").to_numpy()
                    if isinstance(column.dtype, pl.Datetime)
                    else column.to_numpy().astype(np.float64 if column.dtype.is_float() else object)
                )
                for name, column in self.table.to_dict().items()
            }
            self._sorted_keys = self.keys.to_numpy().astype(str)
        if not keys or self._sorted_keys.size == 0:
            return {name: column[:0] for name, column in self._arrays.items()}
        # A key longer than the longest one here has no rows; the rest are searched at the array's
        # own width (a wider query would make numpy cast the whole array, milliseconds a call).
        width = self._sorted_keys.dtype.itemsize // 4
        wanted = np.asarray([k for k in keys if len(k) <= width], dtype=self._sorted_keys.dtype)
        start = np.searchsorted(self._sorted_keys, wanted, side="left")
        end = np.searchsorted(self._sorted_keys, wanted, side="right")
        lengths = end - start
        index = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return {name: column[index] for name, column in self._arrays.items()}


@dataclass
class FeatureSnapshot:
    """A loaded snapshot: its metadata, its tables, each table's rows by key."""

    meta: dict
    tables: dict[str, pl.DataFrame]
    _indexes: dict[str, RowIndex] = field(default_factory=dict, repr=False)
    _views: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path | str) -> FeatureSnapshot:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if "keys" not in meta:
            raise ValueError(
                f"{path}: a feature snapshot of an older layout (no 'keys' in meta.json); "
                "package the model again to rebuild it"
            )
        snapshot = cls(meta, {name: pl.read_parquet(path / f"{name}.parquet") for name in meta["keys"]})
        # Only tables looked up by key are indexed: an index holds a sorted copy of its table.
        snapshot._indexes = {
            name: RowIndex(table, meta["keys"][name]) for name, table in snapshot.tables.items() if meta["keys"][name]
        }
        return snapshot

    @property
    def cutoff(self) -> datetime:
        return datetime.fromisoformat(self.meta["cutoff"])

    def rows(self, name: str, values: pl.DataFrame) -> pl.DataFrame:
        """The rows of table ``name`` whose key is one of ``values``' rows."""
        if name not in self._indexes:
            raise KeyError(f"snapshot table {name!r} has no key columns: it is not looked up by key")
        return self._indexes[name].rows(values)

    def arrays(self, name: str, keys: list[str]) -> dict[str, np.ndarray]:
        """The rows of table ``name`` (keyed by one column) under these keys, as numpy columns
        (``RowIndex.arrays``)."""
        if name not in self._indexes:
            raise KeyError(f"snapshot table {name!r} has no key columns: it is not looked up by key")
        return self._indexes[name].arrays(keys)

    def view(self, kind: Callable[[FeatureSnapshot], View]) -> View:
        """``kind(self)``, made once per snapshot: a family's reading of its tables."""
        if kind not in self._views:
            self._views[kind] = kind(self)
        return self._views[kind]
