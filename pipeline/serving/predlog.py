"""Prediction logging from a service: bounded, off the request path, never an error for a request.

``PredictionLog.record`` puts one answer on a bounded in-memory queue (``put_nowait``: a few
microseconds) and returns. One writer thread per worker drains the queue and writes the answers,
grouped by hour, as Parquet files under the log's root (``pipeline.data.predictions`` says where
and how they are read back) every ``flush_seconds`` or ``flush_rows`` answers, and when the worker
stops. When the queue is full (the sink is slower than the traffic) or a write fails (the sink is
down), the answers concerned are dropped and counted (``dropped``, by reason; the service reports
them in ``/metrics`` as ``shopml_prediction_log_dropped_total``); the request never waits for the
sink and never fails because of it.

Hand-written rather than a logging handler or BentoML's monitoring API: neither writes columnar
files to an fsspec URI with bounded memory and a drop counter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime

from pipeline.data.predictions import SCHEMA, partition

log = logging.getLogger(__name__)

FIELDS = tuple(SCHEMA.names)
CHUNK_ROWS = 256  # answers converted to Arrow per hold of the GIL


class PredictionLog:
    def __init__(
        self,
        root: str,
        model: str,
        capacity: int = 10_000,
        flush_rows: int = 5_000,
        flush_seconds: float = 30.0,
        on_drop: Callable[[int, str], None] | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        import fsspec

        self.root, self.model = root.rstrip("/"), model
        self.fs, _ = fsspec.core.url_to_fs(self.root)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped: Counter[str] = Counter()
        self.written = 0
        self.on_drop, self.on_write = on_drop, on_write
        self._stop = threading.Event()
        self._name = f"{socket.gethostname()}-{os.getpid()}"
        self._last_error = 0.0
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{model}", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        request_id: str,
        ts: datetime,
        model_version: str,
        role: str,
        user_id: str | None,
        items: list[str],
        scores: list[float],
        source: str,
        history: Sequence[str] = (),
        client_request_id: str | None = None,
    ) -> bool:
        """Queue one answer; False (and counted) when the queue is full. Never raises."""
        row = (
            request_id,
            ts,
            self.model,
            model_version,
            role,
            user_id or "",
            list(items),
            [float(s) for s in scores],
            source,
            list(history),
            client_request_id,
        )
        try:
            self.queue.put_nowait(row)
            return True
        except queue.Full:
            self._drop(1, "queue_full")
            return False

    def _drop(self, n: int, reason: str) -> None:
        self.dropped[reason] += n
        if self.on_drop is not None:
            try:
                self.on_drop(n, reason)
            except Exception:  # a metrics backend must not break the log either
                log.exception("prediction log: the drop counter failed")

    def _run(self) -> None:
        pending: list[tuple] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(queue.Empty):
                pending.append(self.queue.get(timeout=min(timeout, 0.5)))
            stopping = self._stop.is_set()
            if stopping:  # take what is left, then write it
                while True:
                    try:
                        pending.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
            if pending and (stopping or len(pending) >= self.flush_rows or time.monotonic() >= deadline):
                try:
                    self._write(pending)
                except Exception:  # the writer outlives any row: the batch is counted, not the thread lost
                    self._drop(len(pending), "sink_error")
                    log.exception("prediction log: %d answers could not be written", len(pending))
                pending = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.flush_seconds
            if stopping:
                return

    def _write(self, rows: list[tuple]) -> None:
        import pyarrow.parquet as pq

        by_hour: dict[str, list[tuple]] = {}
        for row in rows:
            try:
                folder = partition(self.root, self.model, row[1])
            except (OverflowError, ValueError, TypeError, AttributeError):  # a time no hour folder can name
                self._drop(1, "bad_row")
                continue
            by_hour.setdefault(folder, []).append(row)
        for folder, part in by_hour.items():
            try:
                table = self._table(part)
                name = f"{self._name}-{uuid.uuid4().hex[:12]}.parquet"
                self.fs.makedirs(folder, exist_ok=True)
                target = f"{folder}/{name}"
                if self.local:  # readers see a complete file or none
                    tmp = f"{folder}/.{name}.tmp"
                    with self.fs.open(tmp, "wb") as fh:
                        pq.write_table(table, fh)
                    self.fs.mv(tmp, target)
                else:  # an object store's PUT is atomic
                    with self.fs.open(target, "wb") as fh:
                        pq.write_table(table, fh)
                self.written += len(part)
                if self.on_write is not None:
                    self.on_write(len(part))
            except Exception as exc:
                self._drop(len(part), "sink_error")
                if time.monotonic() - self._last_error > 60:  # one line a minute, not one per flush
                    self._last_error = time.monotonic()
                    log.warning(
                        "prediction log: %d answers dropped, %s could not be written: %s", len(part), folder, exc
                    )

    @staticmethod
    def _table(rows: list[tuple]):
        """The rows as one Arrow table, converted ``CHUNK_ROWS`` at a time with a GIL release between
        chunks: converting Python lists holds the GIL, and one conversion of thousands of answers
        held it long enough to stall the service's event loop for tens of milliseconds."""
        import pyarrow as pa

        chunks = []
        for start in range(0, len(rows), CHUNK_ROWS):
            part = rows[start : start + CHUNK_ROWS]
            chunks.append(
                pa.Table.from_pydict({name: [r[i] for r in part] for i, name in enumerate(FIELDS)}, schema=SCHEMA)
            )
            time.sleep(0)  # let the request threads run
        return pa.concat_tables(chunks)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
