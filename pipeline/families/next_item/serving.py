"""What the ``next_item`` service computes, without HTTP: its request schemas, the snapshot tables it
reads (each user's recent items and purchases), and the ranking of a batch of requests. The service
(``service.NextItemService``) calls these from its batch thread; ``make bench-serve`` calls the same
methods for the raw ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field, StrictBool, StrictInt

from pipeline.families.next_item.evaluation import HISTORY_LEN
from pipeline.families.next_item.features import user_histories
from pipeline.serving.api import Id, Strict

MAX_K = 100
MAX_HISTORY = 200
MAX_EXCLUDE = 1000
DEFAULT_K = 10


class RecommendRequest(Strict):
    """A user id, a recent history, or both (the history's items are taken as the newest)."""

    user_id: Id | None = None
    history: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY)
    k: StrictInt = Field(DEFAULT_K, ge=1, le=MAX_K)
    exclude: list[Id] = Field(
        default_factory=list, max_length=MAX_EXCLUDE, description="items never to recommend, e.g. out of stock"
    )
    exclude_purchased: StrictBool = Field(False, description="leave out what the user already bought")


class Recommendation(BaseModel):
    items: list[str]
    scores: list[float]
    source: Literal["model", "popularity"]  # popularity: a cold start (no known history)
    user_known: bool
    model_version: str
    reason: str | None = Field(None, description="why the answer is popularity, when it is")


def snapshot_tables(events: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime) -> dict:
    """Per user: the most recent items (as many as a model is ever sent) and every item bought; read
    whole into ``Histories`` (a dict by user id), so not indexed by key."""
    return {"histories": (user_histories(events, HISTORY_LEN), [])}


class Histories:
    """The snapshot's histories by user id (``FeatureSnapshot.view(Histories)``)."""

    def __init__(self, snapshot) -> None:
        self.snapshot = snapshot
        self.table = snapshot.tables["histories"]
        self._row = {u: i for i, u in enumerate(self.table["user_id"].to_list())}

    def users(self) -> list[str]:
        return self.table["user_id"].to_list()

    def knows(self, user_id: str) -> bool:
        return user_id in self._row

    def history(self, user_id: str) -> list[str]:
        row = self._row.get(user_id)
        return [] if row is None else self.table["items"][row].to_list()

    def purchased(self, user_id: str) -> list[str]:
        row = self._row.get(user_id)
        return [] if row is None else self.table["purchased"][row].to_list()

    def served_history(self, user_id: str | None, sent: list[str], limit: int = HISTORY_LEN) -> list[str]:
        """The history a recommender is given for a request: the user's snapshot history (a known
        user), then the items the request sent, the newest ``limit``. The service answers from it, and
        monitoring scores the floors on the same input."""
        known = self.history(user_id) if user_id is not None and self.knows(user_id) else []
        return (known + list(sent))[-limit:]


@dataclass
class Row:
    """One recommendation request as the batch sees it: a packaged user's state row, or a history
    to encode; the number of items wanted and the items never to return."""

    state_row: int | None
    history: list[str] | None
    k: int
    exclude: list[str]


class NextItemRanker:
    """The recommender pyfunc (``SASRecPyfunc``), the feature snapshot and the packaged user states."""

    def __init__(self, pyfunc, snapshot, states) -> None:
        self.pyfunc, self.snapshot, self.states = pyfunc, snapshot, states

    def rank_rows(self, rows: list[Row]) -> list[tuple[list[str], list[float], str]]:
        """One model call for a batch: packaged users from their states, the others through the
        transformer; (items, scores, source) per row, in the rows' order."""
        from pipeline.families.next_item.pyfunc import UserStates

        known = [i for i, r in enumerate(rows) if r.state_row is not None]
        fresh = [i for i, r in enumerate(rows) if r.state_row is None]
        parts = []
        if known:
            parts.append(self.states.take([rows[i].state_row for i in known]))
        if fresh:
            parts.append(self.pyfunc.user_states(self.pyfunc.encode_many([rows[i].history for i in fresh])))
        order = known + fresh
        items, scores, sources = self.pyfunc.rank_lists(
            UserStates.cat(parts), [rows[i].k for i in order], [rows[i].exclude for i in order]
        )
        answers: list = [None] * len(rows)
        for position, i in enumerate(order):
            answers[i] = (items[position], scores[position], sources[position])
        return answers
