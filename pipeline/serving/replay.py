"""Replay a day of a shop's sessions against a served model, as the shop's front end would call it.

The requests come from the day's raw event file (the generator's, or an export in the canonical
format), as the family's ``Monitoring.requests`` builds them: for the recommender, one request per
step of a session, with the user's id and the session's items so far as the history, at the step's
time; for the propensity model, one request per session at its last step, with the session's items
as the candidates. Each request carries its event time in the ``x-shopml-event-time`` header, which a
service started with ``SHOPML_ACCEPT_EVENT_TIME=1`` logs its answer at, so that the day's answers
can be joined with the events that followed them (``pipeline.lifecycle.monitor``).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.core.errors import BadInput

KEY_ENV = "SHOPML_API_KEY"  # the key a replay sends (the admin key, for its event times to count)


@dataclass
class ReplayResult:
    requests: int
    failed: int
    seconds: float
    statuses: dict[int, int]
    in_order: bool = False  # sent one at a time (``Monitoring.in_order``)
    endpoints: dict[str, int] = field(default_factory=dict)  # requests per endpoint

    def line(self, model: str, day: str) -> str:
        order = ", one at a time in time order" if self.in_order else ""
        each = f" ({', '.join(f'{n} to /{e}' for e, n in self.endpoints.items())})" if len(self.endpoints) > 1 else ""
        return (
            f"replayed {self.requests} {model} requests of {day}{each} in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f}/s{order}), {self.failed} failed"
        )


def read_day(path: Path) -> pl.DataFrame:
    """A raw events file in the canonical format (CSV or Parquet) with the canonical types, oldest first."""
    from pipeline.core.schema import EVENTS_SCHEMA

    path = Path(path)
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=0)
    missing = {"event_time", "user_id", "session_id", "event_type", "item_id"} - set(frame.columns)
    if missing:
        raise BadInput(f"{path}: not a canonical events file, columns {sorted(missing)} are missing")
    if frame.schema["event_time"] == pl.String:
        frame = frame.with_columns(pl.col("event_time").str.to_datetime(time_zone="UTC"))
    return frame.with_columns(
        pl.col(c).cast(t) for c, t in EVENTS_SCHEMA.items() if c in frame.columns and c != "event_time"
    ).sort("event_time", "session_id")


def replay(url: str, model: str, events: pl.DataFrame, concurrency: int = 16, limit: int | None = None) -> ReplayResult:
    """Send the day's requests (in time order, ``concurrency`` at a time; one at a time for a family
    whose answers depend on the requests answered before, ``Monitoring.in_order``); a failed
    request is counted."""
    import time

    import httpx

    from pipeline import families

    spec = families.get(model)
    if spec.monitoring is None:
        raise BadInput(f"model family {model!r} cannot replay sessions (no ModelSpec.monitoring)")
    # (event time, body, endpoint): a request that names no endpoint goes to the family's own.
    requests: list[tuple[str, dict, str]] = [
        (r[0], r[1], r[2] if len(r) > 2 else spec.endpoint) for r in spec.monitoring.requests(events)
    ]
    if spec.monitoring.in_order:
        concurrency = 1
    requests = requests[:limit] if limit else requests
    base = url.rstrip("/")
    statuses: dict[int, int] = {}
    # A served model lets nobody in without a key; the event time counts only with the admin key.
    headers = {"authorization": f"Bearer {os.environ[KEY_ENV]}"} if os.environ.get(KEY_ENV) else {}

    async def run() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        async with httpx.AsyncClient(timeout=60) as client:

            async def worker() -> None:
                while not queue.empty():
                    at, body, endpoint = queue.get_nowait()
                    try:
                        response = await client.post(
                            f"{base}/{endpoint}", json=body, headers={**headers, "x-shopml-event-time": at}
                        )
                        code = response.status_code
                    except httpx.HTTPError:
                        code = 0
                    statuses[code] = statuses.get(code, 0) + 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run())
    failed = sum(n for code, n in statuses.items() if code != 200)
    endpoints: dict[str, int] = {}
    for _, _, endpoint in requests:
        endpoints[endpoint] = endpoints.get(endpoint, 0) + 1
    return ReplayResult(
        len(requests), failed, time.perf_counter() - started, statuses, spec.monitoring.in_order, endpoints
    )
