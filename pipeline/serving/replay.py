"""Replay a day of a shop's sessions against a served model, as the shop's front end would call it.

The requests come from the day's raw event file (the generator's, or an export in the canonical
format): for the recommender, one request per step of a session (a view, cart or purchase of a
new item), with the user's id and the session's items so far as the history, at the step's time;
for the propensity model, one request per session at its last step, with the session's items as
the candidates. Each request carries its event time in the ``x-shopml-event-time`` header, which a
service started with ``SHOPML_ACCEPT_EVENT_TIME=1`` logs its answer at, so that the day's answers
can be joined with the events that followed them (``pipeline.lifecycle.monitor``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.data.dataset import SEQUENCE_EVENT_TYPES

MAX_CANDIDATES = 20


@dataclass
class ReplayResult:
    requests: int
    failed: int
    seconds: float
    statuses: dict[int, int]

    def line(self, model: str, day: str) -> str:
        return (f"replayed {self.requests} {model} requests of {day} in {self.seconds:.1f} s "
                f"({self.requests / max(self.seconds, 1e-9):.0f}/s), {self.failed} failed")


def read_day(path: Path) -> pl.DataFrame:
    """The canonical columns of a raw events file (CSV or Parquet), oldest first."""
    path = Path(path)
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=0)
    missing = {"event_time", "user_id", "session_id", "event_type", "item_id"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a canonical events file, columns {sorted(missing)} are missing")
    if frame.schema["event_time"] == pl.String:
        frame = frame.with_columns(pl.col("event_time").str.to_datetime(time_zone="UTC"))
    return frame.sort("event_time", "session_id")


def next_item_requests(events: pl.DataFrame, k: int = 10) -> list[tuple[str, dict]]:
    """(event time, body) per session step; the history is the session's distinct steps so far."""
    steps = events.filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES)).sort("session_id", "event_time")
    out, session, history = [], None, []
    for row in steps.iter_rows(named=True):
        if row["session_id"] != session:
            session, history = row["session_id"], []
        if history and history[-1] == row["item_id"]:
            continue   # a cart after a view of the same item is one step (as in training)
        history.append(row["item_id"])
        out.append((row["event_time"].isoformat(), {"user_id": row["user_id"], "history": history[-50:], "k": k}))
    return sorted(out, key=lambda r: r[0])


def propensity_requests(events: pl.DataFrame) -> list[tuple[str, dict]]:
    """(event time, body) per session: its user and items, at its last view or cart."""
    browsing = events.filter(pl.col("event_type").is_in(["view", "add_to_cart"]))
    sessions = (browsing.group_by("session_id").agg(pl.col("user_id").first(), pl.col("event_time").max(),
                                                    pl.col("item_id").unique(maintain_order=True)
                                                    .head(MAX_CANDIDATES))
                .sort("event_time"))
    return [(r["event_time"].isoformat(), {"candidates": [{"user_id": r["user_id"], "item_id": i}
                                                          for i in r["item_id"]]})
            for r in sessions.iter_rows(named=True)]


def replay(url: str, model: str, events: pl.DataFrame, concurrency: int = 16, limit: int | None = None) -> ReplayResult:
    """Send the day's requests (in time order, ``concurrency`` at a time); a failed request is counted."""
    import time

    import httpx

    requests = next_item_requests(events) if model == "next_item" else propensity_requests(events)
    requests = requests[:limit] if limit else requests
    endpoint = f"{url.rstrip('/')}/{'recommend' if model == 'next_item' else 'purchase_probability'}"
    statuses: dict[int, int] = {}

    async def run() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        async with httpx.AsyncClient(timeout=60) as client:
            async def worker() -> None:
                while not queue.empty():
                    at, body = queue.get_nowait()
                    try:
                        response = await client.post(endpoint, json=body, headers={"x-shopml-event-time": at})
                        code = response.status_code
                    except httpx.HTTPError:
                        code = 0
                    statuses[code] = statuses.get(code, 0) + 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run())
    failed = sum(n for code, n in statuses.items() if code != 200)
    return ReplayResult(len(requests), failed, time.perf_counter() - started, statuses)
