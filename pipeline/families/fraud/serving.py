"""What the ``fraud`` service computes, without HTTP: its request schema, the snapshot it reads, and
the scoring of a batch of orders.

An order's features are velocities and first sightings, which only its keys' history can give. The
snapshot (``snapshot_tables``, cut from the dataset version as of its end) holds, per key, the
earlier orders (every order of a user; the last ``RECENT_DAYS`` of each device, address and card)
and when each (user, device), (user, country) and (card, user) pair was first seen, with sign-ups
and each user's first event. A request's features are ``orders.order_features`` (the training
code) run over the rows of the request's own keys plus the request: the same values training
computed, as of the order's time. Orders scored since the snapshot was cut are kept in memory
(``RecentOrders``) and count too, so a burst of card tests minutes apart is seen as a burst; each
worker keeps its own, so with several workers a burst is split between them (documented in
docs/families/fraud.md: a shared store is the production answer).
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import polars as pl
from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator

from pipeline.families.fraud.orders import DENSE, order_features, orders_of
from pipeline.serving.api import Id, Strict

MAX_ORDERS = 100
RECENT_DAYS = 37  # the longest window (30 days) and a week of replays before the snapshot's cutoff
MAX_RECENT_ORDERS = 500_000  # orders a worker keeps in memory since its snapshot
ORDER_COLUMNS: dict[str, pl.DataType] = {
    "session_id": pl.String(),
    "user_id": pl.String(),
    "order_time": pl.Datetime("us", "UTC"),
    "amount": pl.Float64(),
    "items": pl.Float64(),
    "session_start": pl.Datetime("us", "UTC"),
    "device_id": pl.String(),
    "ip": pl.String(),
    "country": pl.String(),
    "payment_id": pl.String(),
}
SEEN_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "device_id": pl.String(),
    "country": pl.String(),
    "payment_id": pl.String(),
    "event_type": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
}
KEY_TABLES = {
    "user_id": "orders_by_user",
    "device_id": "orders_by_device",
    "ip": "orders_by_ip",
    "payment_id": "orders_by_card",
}


class Order(Strict):
    """One order at checkout. Its features are computed from the snapshot and the orders scored
    since, by its keys, unless the caller sends them (``features``: all of ``orders.DENSE``)."""

    order_time: AwareDatetime = Field(description="when the order was placed, with its time zone")
    amount: float = Field(ge=0, allow_inf_nan=False, description="the order's total, in the shop's currency")
    currency: str | None = Field(None, description="ISO 4217 code; must be the shop's (see /metadata)")
    user_id: Id
    order_id: Id | None = Field(None, description="the shop's order id; one is made when absent")
    session_start: AwareDatetime | None = Field(None, description="when the order's session began (default: its time)")
    items: float = Field(1.0, ge=0, allow_inf_nan=False)
    device_id: Id | None = None
    ip: Id | None = None
    country: str | None = Field(None, min_length=2, max_length=2, description="ISO 3166 alpha-2")
    payment_id: Id | None = Field(None, description="a fingerprint of the payment instrument, never its number")
    features: dict[str, float] | None = Field(None, description=f"all of: {', '.join(DENSE)}")

    @field_validator("currency")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()):
            raise ValueError(f"unknown currency {value!r}: expected an ISO 4217 code such as EUR")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Order:
        if self.session_start is not None and self.session_start > self.order_time:
            raise ValueError("session_start: after order_time")
        if self.features is not None:
            missing = [f for f in DENSE if f not in self.features]
            unknown = sorted(set(self.features) - set(DENSE))
            if missing or unknown:
                raise ValueError(f"features: missing {missing}, unknown {unknown}")
        return self


class ScoreRequest(Strict):
    orders: list[Order] = Field(min_length=1, max_length=MAX_ORDERS)


class Reason(BaseModel):
    feature: str
    value: float
    contribution: float


class Scored(BaseModel):
    order_id: str
    score: float
    band: str = Field(description="approve, review or block (the thresholds in /metadata)")
    reasons: list[Reason]


class Scores(BaseModel):
    scores: list[Scored]
    model_version: str


def snapshot_tables(events: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime) -> dict:
    """The earlier orders per key and the first sightings per user, device and card, as of ``cutoff``."""
    past = events.filter(pl.col("event_time") < cutoff)
    orders = orders_of(past).select(list(ORDER_COLUMNS))
    recent = orders.filter(pl.col("order_time") >= cutoff - timedelta(days=RECENT_DAYS))
    tables: dict = {"orders_by_user": (orders, ["user_id"])}
    for key in ("device_id", "ip", "payment_id"):
        tables[KEY_TABLES[key]] = (recent.filter(pl.col(key).is_not_null()), [key])
    seen = first_sightings(past)
    tables["seen_by_user"] = (seen, ["user_id"])
    tables["seen_by_device"] = (seen.filter(pl.col("device_id").is_not_null()), ["device_id"])
    tables["seen_by_card"] = (seen.filter(pl.col("payment_id").is_not_null()), ["payment_id"])
    return tables


def first_sightings(events: pl.DataFrame) -> pl.DataFrame:
    """What ``order_features`` reads of the events beyond orders, one row per fact: each user's
    first event and sign-up, each (user, device), (user, country), (user, card) pair's first time."""
    timed = events.select(*(c for c in SEEN_COLUMNS if c != "event_type"), "event_type")
    parts = [
        timed.group_by("user_id").agg(pl.col("event_time").min()).with_columns(pl.lit("first").alias("event_type")),
        timed.filter(pl.col("event_type") == "signup")
        .group_by("user_id")
        .agg(pl.col("event_time").min())
        .with_columns(pl.lit("signup").alias("event_type")),
    ]
    for column in ("device_id", "country", "payment_id"):
        parts.append(
            timed.filter(pl.col(column).is_not_null())
            .group_by("user_id", column)
            .agg(pl.col("event_time").min())
            .with_columns(pl.lit("pair").alias("event_type"))
        )
    return pl.concat([p.select(_typed(p, SEEN_COLUMNS)) for p in parts], how="vertical")


def _typed(frame: pl.DataFrame, columns: dict) -> list[pl.Expr]:
    return [(pl.col(c) if c in frame.columns else pl.lit(None)).cast(dtype).alias(c) for c, dtype in columns.items()]


class RecentOrders:
    """The orders (and their first sightings) this worker scored since its snapshot, by key: the
    velocity of the last minutes. Bounded: older than ``RECENT_DAYS`` or past ``MAX_RECENT_ORDERS``,
    the oldest go."""

    def __init__(self) -> None:
        self.orders = pl.DataFrame(schema=ORDER_COLUMNS)
        self.seen = pl.DataFrame(schema=SEEN_COLUMNS)
        self.lock = threading.Lock()

    def add(self, orders: pl.DataFrame) -> None:
        if orders.is_empty():
            return
        with self.lock:
            merged = pl.concat([self.orders, orders]).unique(subset="session_id", keep="first", maintain_order=True)
            newest = merged["order_time"].max()
            keep = merged.filter(pl.col("order_time") >= newest - timedelta(days=RECENT_DAYS))  # type: ignore[operator]
            self.orders = keep.tail(MAX_RECENT_ORDERS)
            seen = pl.concat([self.seen, _order_sightings(orders)])
            self.seen = seen.filter(pl.col("event_time") >= newest - timedelta(days=RECENT_DAYS)).tail(  # type: ignore[operator]
                4 * MAX_RECENT_ORDERS
            )

    def rows(self, orders: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The kept orders sharing a key with ``orders``, and the kept sightings of their users,
        devices and cards."""
        with self.lock:
            held, seen = self.orders, self.seen
        if held.is_empty():
            return held, seen

        def among(column: str) -> pl.Expr:
            return pl.col(column).is_in(orders[column].drop_nulls().to_list())

        match = pl.lit(False)
        for key in KEY_TABLES:
            match = match | among(key)
        seen_match = among("user_id") | among("device_id") | among("payment_id")
        return held.filter(match), seen.filter(seen_match)


def _order_sightings(orders: pl.DataFrame) -> pl.DataFrame:
    """An order's own facts as sightings (its time as the first event of its user and of each pair)."""
    events = orders.select(
        "user_id",
        "device_id",
        "country",
        "payment_id",
        pl.col("session_start").alias("event_time"),
        pl.lit("purchase").alias("event_type"),
    )
    return first_sightings(events).filter(pl.col("event_type") != "signup")


def order_frame(orders: list[Order]) -> pl.DataFrame:
    """The requests as order rows (``ORDER_COLUMNS``), in request order."""
    return pl.DataFrame(
        {
            "session_id": [o.order_id or f"req-{uuid.uuid4().hex}" for o in orders],
            "user_id": [o.user_id for o in orders],
            "order_time": [_utc(o.order_time) for o in orders],
            "amount": [o.amount for o in orders],
            "items": [o.items for o in orders],
            "session_start": [_utc(o.session_start or o.order_time) for o in orders],
            "device_id": [o.device_id for o in orders],
            "ip": [o.ip for o in orders],
            "country": [o.country for o in orders],
            "payment_id": [o.payment_id for o in orders],
        },
        schema=ORDER_COLUMNS,
    )


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


class OrderScorer:
    """The fraud pyfunc (``FraudPyfunc``), the feature snapshot and the orders scored since."""

    def __init__(self, pyfunc, snapshot) -> None:
        self.pyfunc, self.snapshot = pyfunc, snapshot
        self.recent = RecentOrders()

    def feature_rows(self, requested: pl.DataFrame) -> pl.DataFrame:
        """``requested``'s order rows with every feature of ``DENSE``, as of each one's time, from
        the snapshot's and the recent orders of their keys; in the same order."""
        looked_up = [requested]
        for key, table in KEY_TABLES.items():
            values = requested.select(key).drop_nulls()
            if values.height:
                looked_up.append(self.snapshot.rows(table, values))
        seen = [
            self.snapshot.rows("seen_by_user", requested.select("user_id")),
            self.snapshot.rows("seen_by_device", requested.select("device_id").drop_nulls()),
            self.snapshot.rows("seen_by_card", requested.select("payment_id").drop_nulls()),
        ]
        recent_orders, recent_seen = self.recent.rows(requested)
        # A request first, so that a replayed order's own earlier copy (same id) is the one dropped.
        orders = (
            pl.concat([*looked_up, recent_orders], how="vertical")
            .unique(subset="session_id", keep="first", maintain_order=True)
            .sort("order_time", "session_id")
        )
        events = pl.concat([*seen, recent_seen], how="vertical")
        features = order_features(orders, events)
        return requested.select("session_id").join(features, on="session_id", how="left", maintain_order="left")

    def score_requests(self, requests: list[list[Order]]) -> list[list[dict]]:
        """The orders of a batch of requests: features in one step, one model call; per request,
        each order's id, score, band and reasons. Orders scored from their keys are remembered."""
        flat = [o for orders in requests for o in orders]
        frame = order_frame(flat)
        keyed = [i for i, o in enumerate(flat) if o.features is None]
        sent = [i for i, o in enumerate(flat) if o.features is not None]
        parts = []
        if keyed:
            parts.append(self.feature_rows(frame[keyed]).with_columns(pl.Series("_order", keyed, dtype=pl.Int64)))
        if sent:
            given = pl.DataFrame(
                {f: [float(flat[i].features[f]) for i in sent] for f in DENSE},  # type: ignore[index]
                schema=dict.fromkeys(DENSE, pl.Float64),
            )
            parts.append(
                pl.concat([frame[sent].select("session_id"), given], how="horizontal").with_columns(
                    pl.Series("_order", sent, dtype=pl.Int64)
                )
            )
        rows = pl.concat([p.select("_order", "session_id", *DENSE) for p in parts]).sort("_order")
        scores = self.pyfunc.scores(rows)
        bands = self.pyfunc.bands.decide(scores)
        reasons = self.pyfunc.reasons(rows)
        if keyed:
            self.recent.add(frame[keyed])
        answers = [
            {"order_id": i, "score": float(s), "band": str(b), "reasons": r}
            for i, s, b, r in zip(rows["session_id"].to_list(), scores, bands, reasons, strict=True)
        ]
        out, start = [], 0
        for orders in requests:
            out.append(answers[start : start + len(orders)])
            start += len(orders)
        return out
