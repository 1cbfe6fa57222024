"""What a service knows about users, cut from one dataset version: a Bento model of parquet files.

A recommendation for a user id needs that user's recent items; a purchase probability for a
(user, item) needs the aggregates the propensity features are computed from. Both are built here
from the canonical dataset, as of the end of its last day, with the same functions training uses
(``pipeline.families.<family>.features``), so a served feature is the feature the model learned from.

The snapshot is tagged by dataset version and shared by every Bento built on that version. A newer
dataset gets a newer snapshot with the next packaging; callers that keep their own, fresher feature
store send features (or histories) in the request instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.data.dataset import latest_catalog, load_events, split_by_time
from pipeline.families.next_item.evaluation import HISTORY_LEN
from pipeline.families.next_item.features import user_histories as histories_of
from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE, assemble_propensity, propensity_tables

SNAPSHOT_MODEL = "shopml-features"
# Bump when the snapshot's tables change, so a Bento store never reuses a snapshot of the old layout.
SNAPSHOT_FORMAT = 3   # 3: histories of same-instant events ordered by item id
HISTORY_KEPT = HISTORY_LEN    # the most recent items kept per user: the longest history a model is sent
TABLES = ("user_item", "user", "item", "catalog", "affinity", "recency")


def user_histories(events: pl.DataFrame, kept: int = HISTORY_KEPT) -> pl.DataFrame:
    """Per user: the recent item ids and every item bought (``features.user_histories``)."""
    return histories_of(events, kept)


def write_snapshot(canonical: Path, dataset_version: str, out: Path) -> dict:
    """Write the snapshot files of the canonical dataset into ``out``; returns its metadata."""
    return write_snapshot_of(load_events(canonical), latest_catalog(canonical), dataset_version, out)


def write_snapshot_of(events: pl.DataFrame, catalog: pl.DataFrame, dataset_version: str, out: Path) -> dict:
    """Write the snapshot of these events (canonical schema) as of the end of their last day."""
    cutoff = split_by_time(events, 0, 0).end
    out.mkdir(parents=True, exist_ok=True)
    user_histories(events).write_parquet(out / "histories.parquet")
    for name, table in propensity_tables(events, catalog, cutoff).items():
        table.write_parquet(out / f"{name}.parquet")
    meta = {"dataset_version": dataset_version, "cutoff": cutoff.isoformat(), "events": events.height,
            "users": events["user_id"].n_unique(), "items": catalog.height}
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


# The key each snapshot table is looked up by, for one candidate batch.
TABLE_KEYS = {"user_item": ["user_id", "item_id"], "recency": ["user_id", "item_id"], "user": ["user_id"],
              "item": ["item_id"], "catalog": ["item_id"], "affinity": ["user_id"]}


@dataclass
class FeatureSnapshot:
    """The loaded snapshot; every lookup of an unknown user or item answers 'nothing known'."""

    meta: dict
    histories: pl.DataFrame
    tables: dict[str, pl.DataFrame]

    @classmethod
    def load(cls, path: Path) -> FeatureSnapshot:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        histories = pl.read_parquet(path / "histories.parquet")
        tables = {name: pl.read_parquet(path / f"{name}.parquet") for name in TABLES}
        snapshot = cls(meta, histories, tables)
        snapshot._row = {u: i for i, u in enumerate(histories["user_id"].to_list())}
        snapshot._index = {name: RowIndex(table, TABLE_KEYS[name]) for name, table in tables.items()}
        return snapshot

    @property
    def cutoff(self) -> datetime:
        return datetime.fromisoformat(self.meta["cutoff"])

    def knows(self, user_id: str) -> bool:
        return user_id in self._row

    def history(self, user_id: str) -> list[str]:
        row = self._row.get(user_id)
        return [] if row is None else self.histories["items"][row].to_list()

    def served_history(self, user_id: str | None, sent: list[str], limit: int = HISTORY_KEPT) -> list[str]:
        """The history a recommender is given for a request: the user's snapshot history (a known
        user), then the items the request sent, the newest ``limit``. The service answers from it, and
        monitoring scores the floors on the same input."""
        known = user_id is not None and self.knows(user_id)
        return ((self.history(user_id) if known else []) + list(sent))[-limit:]

    def purchased(self, user_id: str) -> list[str]:
        row = self._row.get(user_id)
        return [] if row is None else self.histories["purchased"][row].to_list()

    def propensity_inputs(self, user_ids: list[str], item_ids: list[str]) -> pl.DataFrame:
        """The propensity pyfunc's input rows for these (user, item) pairs, in order."""
        candidates = pl.DataFrame({"user_id": user_ids, "item_id": item_ids}, schema={"user_id": pl.String,
                                                                                       "item_id": pl.String})
        # Only the rows of these users and items take part in the joins, not whole tables.
        tables = {name: self._index[name].rows(candidates) for name in TABLES}
        return assemble_propensity(candidates, tables).select("item_id", "category", "brand", *PROPENSITY_DENSE)
