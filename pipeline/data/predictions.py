"""The prediction log as a landing source: what the services answered, read back for monitoring.

The services (``pipeline.serving.predlog``) append every answer to Parquet files under a root URI
(``$SHOPML_HOME/predictions`` by default, or any fsspec URI such as ``s3://bucket/predictions``)::

    <root>/<model>/date=YYYY-MM-DD/hour=HH/<host>-<pid>-<uuid>.parquet

One file per flush and worker, never appended to or rewritten: object stores have no append, and
several workers (or replicas) write beside each other without a lock. A file is complete once its
name ends in ``.parquet``: local writes go to a hidden temporary name first and are renamed; an
object store's PUT is atomic. Readers take only those names.

A row (``SCHEMA``) is one answer: the request id, its time (UTC), the model, version and role
(``champion``; ``challenger`` for a canary's answer; ``shadow`` for an answer computed and logged
but not returned), the user (empty when the request sent none), the ranked item ids and their
scores (for the propensity model: the candidates and their probabilities), and the source
(``model`` or ``popularity``), and the item ids the request itself sent (a recommender's sent
history; empty otherwise), so that monitoring can score the floors on the very input the model had.
Files written before that column existed read back with it empty.

A day replayed twice (an Airflow retry of a replay task, ``make demo`` run again on the same state)
logs every answer twice. ``distinct_answers`` keeps one of each, for the figures.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa

from pipeline.core.errors import BadInput

SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("role", pa.string()),
        ("user_id", pa.string()),
        ("items", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())),
        ("source", pa.string()),
        ("history", pa.list_(pa.string())),
        # The client's x-request-id, as sent (null without one): kept for tracing, never a join key;
        # request_id is made by the server, so a client can neither pick a model nor forge pairs.
        ("client_request_id", pa.string()),
    ]
)
PREDICTIONS_ENV = "SHOPML_PREDICTION_LOG"


def default_root() -> str | None:
    """Where services log by default: ``$SHOPML_PREDICTION_LOG`` (``off`` turns logging off), else
    ``$SHOPML_HOME/predictions``, else nothing (a service started without a state folder)."""
    value = os.environ.get(PREDICTIONS_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "false") else value
    home = os.environ.get("SHOPML_HOME")
    return str(Path(home) / "predictions") if home else None


def partition(root: str, model: str, when: datetime) -> str:
    """The folder of one model's answers of one hour."""
    when = when.astimezone(timezone.utc)
    return f"{root.rstrip('/')}/{model}/date={when:%Y-%m-%d}/hour={when:%H}"


def read_predictions(root: str, model: str, day: date | str) -> pl.DataFrame:
    """Every logged answer of ``model`` on ``day`` (UTC), oldest first; an empty frame of the same
    schema when nothing was logged."""
    import fsspec
    import pyarrow.parquet as pq

    day = date.fromisoformat(day) if isinstance(day, str) else day
    fs, base = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{model}/date={day.isoformat()}")
    files = sorted(p for p in fs.glob(f"{base}/hour=*/*.parquet") if not Path(p).name.startswith("."))
    tables = []
    for path in files:
        with fs.open(path, "rb") as fh:
            try:
                table = pq.read_table(fh)
                for name in SCHEMA.names:  # a column added since the file was written: empty
                    if name not in table.column_names:
                        table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
                tables.append(table.select(SCHEMA.names).cast(SCHEMA))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
                raise BadInput(f"prediction log file {fs.unstrip_protocol(path)} is not readable: {exc}") from exc
    frame = pl.from_arrow(pa.concat_tables(tables) if tables else SCHEMA.empty_table())
    return frame.sort("ts", "request_id")


# What makes two logged rows one answer: the same model version, in the same role, answering the
# same user at the same time with the same sent history and the same items (the orders, candidates or
# forecasts asked for; a recommender's answer, which is the same for the same history and version).
# A live service logs at its own clock, to the microsecond, so only a repeat of a replay (whose
# requests carry their event time) or a client's resent request can match.
ANSWER_KEY = ("model", "model_version", "role", "user_id", "ts", "history", "items")


def distinct_answers(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """``frame`` with each answer once (the first logged, in ``read_predictions``' order), and how
    many repeats were left out. The request id is not part of the key: the server makes a new one for
    every request, resent or not (``pipeline.serving.common.request_context``)."""
    kept = frame.unique(subset=list(ANSWER_KEY), keep="first", maintain_order=True)
    return kept, frame.height - kept.height
