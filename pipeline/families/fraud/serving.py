"""What the ``fraud`` service computes, without HTTP: its request schema, the snapshot it reads, and
the scoring of a batch of orders.

An order's features are velocities and first sightings, which only its keys' history can give. The
snapshot (``snapshot_tables``, cut from the dataset version as of its end) holds, per key, the
earlier orders (every order of a user; the last ``RECENT_DAYS`` of each device, address and card)
and when each (user, device), (user, country) and (card, user) pair was first seen, with sign-ups
and each user's first event, the chargebacks that had arrived, under the account, device and card
of the order charged back, and every order's keys by its id (a chargeback notice names the order).
A request's features are those of ``orders.order_features`` (the training code) over the rows of
the request's own keys plus the request, computed for the request alone (``online_matrix``, in
numpy; tested against the training code order by order): the values training computed, as of the
order's time. Orders scored since the snapshot was cut are kept
(``RecentOrders``: a SQLite file every worker of the host shares) and count too, so a burst of card
tests minutes apart is seen as a burst; so are the chargebacks reported since (``/chargebacks``),
so an account charged back this morning is known at its next checkout, not at the next retrain,
and the sign-ups reported since (``/signups``), so an account opened minutes before its first
order is known as new: without them every account opened after the snapshot looked as old as the
unknown sign-ups of the shop's first customers (the demo's replayed day: 30 of 193 orders); and
the sessions begun since (``/sessions``), so an account that browsed days before its first order
is known as seen, on that device (ten days after a snapshot of the test shop: 32 of 1,174 orders
looked like first visits without them).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, field_validator, model_validator

from pipeline.families.fraud.orders import CHARGEBACK_KEYS, DENSE, charged_back, orders_of
from pipeline.serving.api import Id, Strict

MAX_ORDERS = 100
RECENT_DAYS = 37  # the longest window (30 days) and a week of replays before the snapshot's cutoff
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
# A chargeback under one key of the order charged back (``key`` as in ``KEY_TABLES``).
CHARGEBACK_COLUMNS: dict[str, pl.DataType] = {
    "key": pl.String(),
    "session_id": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
}
# The keys an order is looked up by, and the prefix of each in the snapshot tables' ``key`` column.
KEY_TABLES = {"user_id": "u", "device_id": "d", "ip": "i", "payment_id": "p"}
SEEN_KEYS = ("user_id", "device_id", "payment_id")


def _utc_representable(moment: datetime) -> datetime:
    """A time whose UTC equivalent Python can hold. ``0001-01-01T00:30:00+01:00`` is valid ISO 8601
    but lies before year 1 once in UTC, and ``9999-12-31T23:30:00-01:00`` after year 9999: the
    conversion raised OverflowError, a 500 (found by make test-reliability's fuzzing). Now a 400
    naming the field."""
    try:
        moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} lies outside the years 1 to 9999 in UTC") from None
    return moment


UtcTime = Annotated[AwareDatetime, AfterValidator(_utc_representable)]


class Order(Strict):
    """One order at checkout. Its features are computed from the snapshot and the orders scored
    since, by its keys, unless the caller sends them (``features``: all of ``orders.DENSE``)."""

    order_time: UtcTime = Field(description="when the order was placed, with its time zone")
    amount: float = Field(ge=0, allow_inf_nan=False, description="the order's total, in the shop's currency")
    currency: str | None = Field(None, description="ISO 4217 code; must be the shop's (see /metadata)")
    user_id: Id
    order_id: Id | None = Field(None, description="the shop's order id; one is made when absent")
    session_start: UtcTime | None = Field(None, description="when the order's session began (default: its time)")
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


class Chargeback(Strict):
    """A chargeback that has arrived: the account's, device's and card's next orders count it
    (``*_chargebacks``). A payment provider's notice names the order and its time; the order's
    keys are the ones the service saw it with (in its snapshot, or scored since), so only an
    order the service never saw needs them sent. A key sent is used as sent."""

    order_id: Id = Field(description="the order charged back (the id /score answered with)")
    time: UtcTime = Field(description="when the chargeback arrived, with its time zone")
    user_id: Id | None = Field(None, description="the order's account (default: as the service saw the order)")
    device_id: Id | None = Field(None, description="the order's device (default: as the service saw the order)")
    payment_id: Id | None = Field(
        None, description="the payment fingerprint the order was paid with (default: as the service saw the order)"
    )


class UnknownOrder(ValueError):
    """A chargeback of an order the service never saw, sent without the order's account."""


class ChargebackRequest(Strict):
    chargebacks: list[Chargeback] = Field(min_length=1, max_length=MAX_ORDERS)


class Sighting(Strict):
    """An account seen somewhere other than an order, with what was seen with it: the facts
    training reads of such events (``first_sightings``)."""

    user_id: Id
    time: UtcTime
    device_id: Id | None = None
    country: str | None = Field(None, min_length=2, max_length=2, description="ISO 3166 alpha-2")
    payment_id: Id | None = None


class Signup(Sighting):
    """An account opened, as the sign-up saw it: its next orders know its age (``account_age_*``),
    and its device, country and card count as already seen with it."""

    time: UtcTime = Field(description="when the account was opened, with its time zone")
    payment_id: Id | None = Field(None, description="a payment fingerprint given at sign-up, if any")


class SignupRequest(Strict):
    signups: list[Signup] = Field(min_length=1, max_length=MAX_ORDERS)


class Session(Sighting):
    """A visit that began without an order yet (a login, a browsing session's first page), as the
    storefront saw it: the account's next orders count it as seen before, and its device, country
    and card as seen with it (``user_seen_before``, ``new_device_for_user``, ``device_accounts``)."""

    time: UtcTime = Field(description="when the session began, with its time zone")
    payment_id: Id | None = Field(None, description="a payment fingerprint seen in the session, if any")


class SessionRequest(Strict):
    sessions: list[Session] = Field(min_length=1, max_length=MAX_ORDERS)


class Recorded(BaseModel):
    recorded: int = Field(
        description="chargebacks, sign-ups or sessions that told the service something new; "
        "one already kept is not counted twice"
    )


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
    # One table per kind, each row under every key it is found by ("u:<user>", "d:<device>", ...),
    # so a request's rows are one lookup of all its keys: every order of a user, the last
    # RECENT_DAYS of a device, address or card; every sighting of a user, device or card.
    keyed = [_keyed(orders, "user_id")] + [_keyed(recent, key) for key in ("device_id", "ip", "payment_id")]
    seen = first_sightings(past)
    return {
        "orders": (pl.concat(keyed), ["key"]),
        "seen": (pl.concat([_keyed(seen, key) for key in SEEN_KEYS]), ["key"]),
        "chargebacks": (chargeback_rows(charged_back(orders, past)), ["key"]),
        # Every order's keys by its id: a chargeback notice names only the order.
        "order_keys": (orders.select("session_id", *CHARGEBACK_KEYS), ["session_id"]),
    }


def chargeback_rows(charged: pl.DataFrame) -> pl.DataFrame:
    """Charged-back orders (``orders.charged_back``) as ``CHARGEBACK_COLUMNS`` rows, one under
    each of the order's keys."""
    parts = [
        _keyed(charged, key).select("key", "session_id", pl.col("chargeback_time").alias("event_time"))
        for key in CHARGEBACK_KEYS
    ]
    return pl.concat([p.select(_typed(p, CHARGEBACK_COLUMNS)) for p in parts], how="vertical")


def _keyed(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    prefix = KEY_TABLES[key]
    return frame.filter(pl.col(key).is_not_null()).with_columns((pl.lit(f"{prefix}:") + pl.col(key)).alias("key"))


def lookup_keys(keys: dict[str, list], kinds) -> list[str]:
    """The ``key`` values (see ``snapshot_tables``) of these key values, for the keys ``kinds``."""
    return [f"{KEY_TABLES[k]}:{v}" for k in kinds for v in keys.get(k, ())]


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
    """The orders (and their sightings) scored since the snapshot, by key: the velocity of the last
    minutes. Kept in a SQLite file that every worker of the service opens (``SHOPML_FRAUD_RECENT``,
    default a file under ``$SHOPML_HOME/serving``; ``memory``: this worker alone), so a burst sent
    round-robin to several workers is one burst; replicas on other hosts each hold their own (one
    file on a shared disk, or callers sending ``features``, for a fleet). Rows are stored as typed
    columns (times in microseconds), found by an index on the key and read back as numpy columns:
    adding an order and finding a request's rows are a fraction of a millisecond. A sighting is
    kept once per fact (a user's first event; a (user, device), (user, country) or (user, card)
    pair), at its earliest time: the features only ask whether, and by whom, each was seen before
    a session began. Bounded: every ``PRUNE_EVERY`` additions, orders, sightings and chargebacks
    older than ``RECENT_DAYS`` before the newest order are deleted, if the served snapshot holds
    them (``covered_until``: its cutoff). Training counts sightings, chargebacks and a user's
    orders over all time, so a row the snapshot lacks is kept until a newer snapshot holds it:
    pruned at 37 days, a chargeback was forgotten, and an account of a stale Bento's was new again.
    Every version served from the file (a champion and a challenger, each with its snapshot)
    notes its cutoff in it (``holders_v1``, refreshed hourly as it adds orders), and rows go only once
    the oldest cutoff of those that added orders in the last ``HOLDER_TTL_S`` holds them.

    Written here rather than on a cache library: the rows are looked up by any of four keys, and
    SQLite (standard library, WAL mode) is safe across processes; Redis would be the next step."""

    PRUNE_EVERY = 1000
    HOLDER_TTL_S = 2 * 86_400  # a version that added no order for two days no longer holds rows back
    HOLD_REFRESH_S = 3_600  # a version adding orders refreshes its row this often, not on every write
    ORDER_FIELDS = tuple(ORDER_COLUMNS)
    SEEN_FIELDS = tuple(SEEN_COLUMNS)
    CHARGEBACK_FIELDS = tuple(CHARGEBACK_COLUMNS)

    def __init__(self, path: str | None = None, covered_until: datetime | None = None) -> None:
        """``covered_until``: the served snapshot's cutoff (None: prune by age alone)."""
        import os
        import sqlite3

        from pipeline.core.settings import get_state_paths

        where = (
            path
            or os.environ.get("SHOPML_FRAUD_RECENT")
            or str(get_state_paths().home / "serving" / "fraud-recent.sqlite")
        )
        if os.environ.get("SHOPML_SMOKE_TEST") == "1":
            where = "memory"  # a smoke test's orders are not the shop's
        if where != "memory":
            Path(where).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(":memory:" if where == "memory" else where, timeout=30, check_same_thread=False)
        self.lock = threading.Lock()  # one connection per worker, shared by its threads
        orders = ", ".join(self.ORDER_FIELDS)
        seen = ", ".join(self.SEEN_FIELDS)
        with self.lock, self.db:
            if where != "memory":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # v2: typed columns (v1 held JSON rows); a v1 file's tables are left alone, unread.
            self.db.execute(f"CREATE TABLE IF NOT EXISTS orders_v2 (key TEXT, {orders})")
            self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS orders_v2_once ON orders_v2 (key, session_id)")
            self.db.execute("CREATE INDEX IF NOT EXISTS orders_v2_by_id ON orders_v2 (session_id)")
            self.db.execute(f"CREATE TABLE IF NOT EXISTS seen_v2 (key TEXT, fact TEXT, {seen})")
            self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS seen_v2_once ON seen_v2 (key, fact)")
            self.db.execute("CREATE TABLE IF NOT EXISTS chargebacks_v1 (key TEXT, session_id TEXT, event_time INTEGER)")
            self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS chargebacks_v1_once ON chargebacks_v1 (key, session_id)")
            # Per served snapshot: its cutoff and when a version on it last added orders (wall clock).
            self.db.execute("CREATE TABLE IF NOT EXISTS holders_v1 (covered_until INTEGER PRIMARY KEY, seen REAL)")
        self._insert_order = f"INSERT OR IGNORE INTO orders_v2 VALUES ({', '.join('?' * (len(self.ORDER_FIELDS) + 1))})"
        self._insert_seen = (
            f"INSERT INTO seen_v2 VALUES ({', '.join('?' * (len(self.SEEN_FIELDS) + 2))}) "
            "ON CONFLICT (key, fact) DO UPDATE SET event_time = excluded.event_time "
            "WHERE excluded.event_time < seen_v2.event_time"
        )
        self._insert_chargeback = (
            "INSERT INTO chargebacks_v1 VALUES (?, ?, ?) "
            "ON CONFLICT (key, session_id) DO UPDATE SET event_time = excluded.event_time "
            "WHERE excluded.event_time < chargebacks_v1.event_time"
        )
        self.added = 0
        self._held_at = 0.0  # when this store last refreshed its row in holders_v1 (wall clock)
        self.covered_until = None if covered_until is None else _us(_utc(covered_until))
        if self.covered_until is not None:
            with self.lock, self.db:
                self._hold()

    def _hold(self) -> None:
        """Note (or refresh) this store's snapshot cutoff in the file; the caller holds the lock."""
        self._held_at = time.time()
        self.db.execute(
            "INSERT INTO holders_v1 VALUES (?, ?) ON CONFLICT (covered_until) DO UPDATE SET seen = excluded.seen",
            (self.covered_until, self._held_at),
        )

    def _covered(self) -> int | None:
        """The oldest cutoff of the snapshots served from this file lately (None: none noted)."""
        (oldest,) = self.db.execute(
            "SELECT min(covered_until) FROM holders_v1 WHERE seen >= ?", (time.time() - self.HOLDER_TTL_S,)
        ).fetchone()
        return oldest

    def order_keys(self, order_ids: list[str]) -> dict[str, dict]:
        """The account, device and card (``CHARGEBACK_KEYS``) of these orders, by id, for those
        kept here."""
        if not order_ids:
            return {}
        marks = ",".join("?" * len(order_ids))
        fields = ", ".join(CHARGEBACK_KEYS)
        with self.lock:
            rows = self.db.execute(
                f"SELECT session_id, {fields} FROM orders_v2 WHERE session_id IN ({marks})", order_ids
            ).fetchall()
        return {row[0]: dict(zip(CHARGEBACK_KEYS, row[1:], strict=True)) for row in rows}

    def add_chargebacks(self, chargebacks: list[Chargeback]) -> int:
        """Remember these chargebacks under their order's account, device and card (each once, at
        its earliest time); how many were new. Every chargeback names its account
        (``OrderScorer.record_chargebacks`` fills the keys the notice left out)."""
        rows = [
            (key, c.order_id, _us(_utc(c.time)))
            for c in chargebacks
            for key in lookup_keys({k: [getattr(c, k)] for k in CHARGEBACK_KEYS if getattr(c, k)}, CHARGEBACK_KEYS)
        ]
        ids = sorted({c.order_id for c in chargebacks})
        known = (
            f"SELECT count(DISTINCT session_id) FROM chargebacks_v1 WHERE session_id IN ({','.join('?' * len(ids))})"
        )
        with self.lock, self.db:
            before = self.db.execute(known, ids).fetchone()[0]
            self.db.executemany(self._insert_chargeback, rows)
            after = self.db.execute(known, ids).fetchone()[0]
        return after - before

    def add_signups(self, signups: list[Signup]) -> int:
        """Remember these sign-ups as the events training reads them (``first_sightings``): the
        account's sign-up and first event, and its (user, device), (user, country) and (user,
        card) pairs, each at its earliest time; how many accounts' sign-ups were new or earlier."""
        rows = self._seen_rows([fact for signup in signups for fact in _signup_sightings(signup)])
        users = sorted(set(lookup_keys({"user_id": [s.user_id for s in signups]}, ("user_id",))))
        query = f"SELECT key, event_time FROM seen_v2 WHERE fact LIKE ? AND key IN ({','.join('?' * len(users))})"
        with self.lock, self.db:
            before = dict(self.db.execute(query, ["signup\x1f%", *users]).fetchall())
            self.db.executemany(self._insert_seen, rows)
            after = dict(self.db.execute(query, ["signup\x1f%", *users]).fetchall())
        return sum(1 for user in users if after.get(user) != before.get(user))

    def add_sessions(self, sessions: list[Session]) -> int:
        """Remember these sessions as the events training reads them (``first_sightings``): the
        account's first event and its (user, device), (user, country) and (user, card) pairs, each
        at its earliest time; how many sessions told something new (a fact, or an earlier time)."""
        told = 0
        with self.lock, self.db:
            for session in sessions:
                before = self.db.total_changes
                self.db.executemany(self._insert_seen, self._seen_rows(_session_sightings(session)))
                told += self.db.total_changes > before
        return told

    def _seen_rows(self, sightings: list[tuple[dict, list[str]]]) -> list[tuple]:
        """``seen_v2`` rows of sightings (``_sightings_of``): one per key each is found by, named
        by its fact, so that a fact is kept once, at its earliest time."""
        rows = []
        for sighting, under in sightings:
            fact = "\x1f".join(
                str(sighting[k]) for k in ("event_type", "user_id", "device_id", "country", "payment_id")
            )
            values = tuple(_us(sighting[k]) if k in TIME_FIELDS else sighting[k] for k in self.SEEN_FIELDS)
            rows += [(key, fact, *values) for key in under]
        return rows

    def add(self, orders: list[dict]) -> None:
        """Remember these order rows (``order_rows``); an order already kept is not added twice."""
        order_rows, seen_rows = [], []
        for row in orders:
            values = tuple(_us(row[k]) if k in TIME_FIELDS else row[k] for k in self.ORDER_FIELDS)
            order_rows += [(f"{KEY_TABLES[k]}:{row[k]}", *values) for k in KEY_TABLES if row[k]]
            seen_rows += self._seen_rows(_sightings_of(row))
        with self.lock, self.db:
            self.db.executemany(self._insert_order, order_rows)
            self.db.executemany(self._insert_seen, seen_rows)
            self.added += len(orders)
            # The row only has to stay younger than HOLDER_TTL_S: a write per /score batch was
            # needless I/O on the path every checkout takes.
            if self.covered_until is not None and time.time() - self._held_at >= self.HOLD_REFRESH_S:
                self._hold()
            if self.added >= self.PRUNE_EVERY:
                self.added = 0
                (newest,) = self.db.execute("SELECT max(order_time) FROM orders_v2").fetchone()
                if newest is not None:
                    oldest = newest - RECENT_DAYS * DAY_US
                    covered = self._covered() if self.covered_until is not None else None
                    if covered is not None:
                        oldest = min(oldest, covered)
                    self.db.execute("DELETE FROM orders_v2 WHERE order_time < ?", (oldest,))
                    self.db.execute("DELETE FROM seen_v2 WHERE event_time < ?", (oldest,))
                    self.db.execute("DELETE FROM chargebacks_v1 WHERE event_time < ?", (oldest,))

    def arrays(self, order_keys: list[str], seen_keys: list[str], charge_keys: list[str]) -> tuple[dict, dict, dict]:
        """The kept orders, sightings and chargebacks under these keys (``lookup_keys``), as numpy
        columns of ``ORDER_COLUMNS``, ``SEEN_COLUMNS`` and ``CHARGEBACK_COLUMNS`` (times in
        microseconds); an order found under several keys is there once per key."""

        def fetch(table: str, fields: tuple, keys: list[str]) -> list[tuple]:
            if not keys:
                return []
            marks = ",".join("?" * len(keys))
            return self.db.execute(f"SELECT {', '.join(fields)} FROM {table} WHERE key IN ({marks})", keys).fetchall()

        with self.lock:
            orders = fetch("orders_v2", self.ORDER_FIELDS, order_keys)
            seen = fetch("seen_v2", self.SEEN_FIELDS, seen_keys)
            charged = fetch("chargebacks_v1", self.CHARGEBACK_FIELDS, charge_keys)
        return _columns(orders, ORDER_TYPES), _columns(seen, SEEN_TYPES), _columns(charged, CHARGEBACK_TYPES)

    def close(self) -> None:
        with self.lock:
            self.db.close()


TIME_FIELDS = ("order_time", "session_start", "event_time")


def _numpy_types(schema: dict) -> list[tuple[str, type]]:
    return [
        (name, np.int64 if isinstance(dtype, pl.Datetime) else np.float64 if dtype == pl.Float64() else object)
        for name, dtype in schema.items()
    ]


# Each column's numpy type, worked out once rather than on every request's rows.
ORDER_TYPES, SEEN_TYPES = _numpy_types(ORDER_COLUMNS), _numpy_types(SEEN_COLUMNS)
CHARGEBACK_TYPES = _numpy_types(CHARGEBACK_COLUMNS)


def _columns(rows: list[tuple], types: list[tuple[str, type]]) -> dict[str, np.ndarray]:
    """Rows (tuples in ``types``' order, times in microseconds) as numpy columns of those types."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in types]
    out = {}
    for (name, kind), values in zip(types, columns, strict=True):
        if kind is object:
            out[name] = np.array(values, dtype=object)
        else:
            out[name] = np.fromiter(values, dtype=kind, count=len(values))
    return out


def _sightings_of(order: dict) -> list[tuple[dict, list[str]]]:
    """An order's own facts as sightings, each with the keys it is found by: its session's start as
    its user's event, and as the first time of its (user, device), (user, country), (user, card)."""
    return _sightings(order, order["session_start"], ("first",))


def _signup_sightings(signup: Signup) -> list[tuple[dict, list[str]]]:
    """A sign-up's facts as sightings: the account's sign-up and its first event, and the first
    time of its (user, device), (user, country), (user, card), at the sign-up's time."""
    return _sightings(signup.model_dump(), _utc(signup.time), ("signup", "first"))


def _session_sightings(session: Session) -> list[tuple[dict, list[str]]]:
    """A session's facts as sightings: its user's event, and the first time of its (user, device),
    (user, country), (user, card), at the session's start (as an order's, ``_sightings_of``)."""
    return _sightings(session.model_dump(), _utc(session.time), ("first",))


def _sightings(event: dict, at: datetime, kinds: tuple[str, ...]) -> list[tuple[dict, list[str]]]:
    user = event["user_id"]
    base = {"user_id": user, "device_id": None, "country": None, "payment_id": None, "event_time": at}
    (by_user,) = lookup_keys({"user_id": [user]}, ("user_id",))
    out = [({**base, "event_type": kind}, [by_user]) for kind in kinds]
    for column in ("device_id", "country", "payment_id"):
        value = event[column]
        if value is not None:
            # Found under the user's key, and under its own where sightings are keyed by it.
            under = [by_user, *lookup_keys({column: [value]}, (column,) if column in SEEN_KEYS else ())]
            out.append(({**base, column: value, "event_type": "pair"}, under))
    return out


def order_rows(orders: list[Order], ids: list[str] | None = None) -> list[dict]:
    """The requests as order rows (``ORDER_COLUMNS``' keys), in request order; ``ids``: the ids
    they were answered under (default: their own, or new ones)."""
    return [
        {
            "session_id": ids[n] if ids is not None else o.order_id or f"req-{uuid.uuid4().hex}",
            "user_id": o.user_id,
            "order_time": _utc(o.order_time),
            "amount": float(o.amount),
            "items": float(o.items),
            "session_start": _utc(o.session_start or o.order_time),
            "device_id": o.device_id,
            "ip": o.ip,
            "country": o.country,
            "payment_id": o.payment_id,
        }
        for n, o in enumerate(orders)
    ]


def order_frame(orders: list[Order]) -> pl.DataFrame:
    """The requests as an order frame (``ORDER_COLUMNS``), in request order."""
    return pl.DataFrame(order_rows(orders), schema=ORDER_COLUMNS)


WINDOW_US = {"10m": 600_000_000, "1h": 3_600_000_000, "1d": 86_400_000_000, "7d": 7 * 86_400_000_000}
WINDOW_US["30d"] = 30 * 86_400_000_000
DAY_US = 86_400_000_000


def online_matrix(
    requests: list[dict], orders: dict[str, np.ndarray], seen: dict[str, np.ndarray], chargebacks: dict[str, np.ndarray]
) -> np.ndarray:
    """``orders.order_features`` of the ``requests`` (order rows), ``[len(requests), len(DENSE)]``,
    from ``orders`` (the requests and the earlier orders sharing a key with them, as columns, times
    in microseconds), ``seen`` (the sightings of their users, devices and cards, as columns) and
    ``chargebacks`` (those under their users, devices and cards; an order's may be there twice). The
    same definitions (left-closed windows, orders in (time, id) order, sightings before the session
    began, whole seconds), in numpy over the few rows a request has: ``order_features`` over the
    same rows takes about 60 ms of polars calls, this well under one. ``tests/test_fraud.py``
    checks both give the same values, order by order."""
    from pipeline.families.fraud.orders import IP_ACCOUNT_WINDOWS, UNKNOWN_ACCOUNT_AGE_DAYS, WINDOWS

    o_time, o_amount, o_sid = orders["order_time"], orders["amount"], orders["session_id"]
    order = np.lexsort((o_sid, o_time))  # (time, id): the order offline features number them in
    rank = np.empty(o_sid.size, dtype=np.int64)
    rank[order] = np.arange(o_sid.size)
    rank_of = dict(zip(o_sid.tolist(), rank.tolist(), strict=True))
    s_user, s_time, s_type = seen["user_id"], seen["event_time"], seen["event_type"]
    c_key, c_time, c_sid = chargebacks["key"], chargebacks["event_time"], chargebacks["session_id"]
    index = {name: j for j, name in enumerate(DENSE)}
    spans = np.array([WINDOW_US[period] for period, _ in WINDOWS], dtype=np.int64)
    out = np.zeros((len(requests), len(DENSE)), dtype=np.float64)
    for n, r in enumerate(requests):
        row = out[n]
        t, start, user = _us(r["order_time"]), _us(r["session_start"]), r["user_id"]
        row[index["amount"]], row[index["log_amount"]], row[index["items"]] = (
            r["amount"],
            np.log1p(r["amount"]),
            r["items"],
        )
        for key in KEY_TABLES:
            value = r[key]
            if value is None:
                continue
            name = key.removesuffix("_id")
            # Every window at once: [orders of this key, windows], left-closed, before the order.
            mine = np.flatnonzero(orders[key] == value)
            ago = t - o_time[mine]
            inside = (ago[:, None] > 0) & (ago[:, None] <= spans[None, :])
            counts = inside.sum(axis=0)
            amounts = o_amount[mine] @ inside if key in ("user_id", "device_id") else None
            users = orders["user_id"][mine] if key == "ip" else None
            for w, (_, suffix) in enumerate(WINDOWS):
                row[index[f"{name}_orders_{suffix}"]] = counts[w]
                if amounts is not None and suffix in ("1d", "7d", "30d"):
                    row[index[f"{name}_amount_{suffix}"]] = amounts[w]
                if users is not None and suffix in IP_ACCOUNT_WINDOWS:
                    others = set(users[inside[:, w]].tolist())
                    others.discard(user)
                    row[index[f"ip_accounts_{suffix}"]] = len(others)
        user_rows = s_user == user
        signed = s_time[user_rows & (s_type == "signup")]
        signed_up = int(signed.min()) if signed.size else None
        known = signed_up is not None and signed_up < t
        # Whole seconds, as polars' total_seconds() gives them offline.
        row[index["account_age_days"]] = (t - signed_up) // 1_000_000 / 86_400 if known else UNKNOWN_ACCOUNT_AGE_DAYS  # type: ignore[operator]
        row[index["account_age_known"]] = float(known)
        # The user's orders before this one, in (time, id) order.
        earlier = np.flatnonzero((orders["user_id"] == user) & (rank < rank_of[r["session_id"]]))
        row[index["user_prior_orders"]] = earlier.size
        row[index["new_ip_for_user"]] = float(r["ip"] is not None and not (orders["ip"][earlier] == r["ip"]).any())
        row[index["session_seconds"]] = (t - start) // 1_000_000
        mean = o_amount[earlier].sum() / earlier.size if earlier.size else 0.0
        # After only free orders, against one unit of the currency (``orders._unit_if_free``).
        row[index["amount_vs_user_mean"]] = r["amount"] / (mean if mean > 0 else 1.0) if earlier.size else 1.0
        row[index["seconds_since_user_last_order"]] = (
            (t - int(o_time[earlier[np.argmax(rank[earlier])]])) // 1_000_000
            if earlier.size
            else UNKNOWN_ACCOUNT_AGE_DAYS * 86_400
        )
        row[index["user_seen_before"]] = float(user_rows.any() and int(s_time[user_rows].min()) < start)
        for column, name in (("device_id", "new_device_for_user"), ("country", "new_country_for_user")):
            if r[column] is not None:
                pair = user_rows & (seen[column] == r[column])
                row[index[name]] = float(not (pair.any() and int(s_time[pair].min()) < start))
        before = s_time < start
        for column, name in (("device_id", "device_accounts"), ("payment_id", "payment_accounts")):
            if r[column] is not None:
                # A pair counts when its first sighting is before the session: any sighting before it.
                shared = (seen[column] == r[column]) & before & ~user_rows
                row[index[name]] = len(set(s_user[shared].tolist()))
        if r["device_id"] is not None:
            day = (orders["device_id"] == r["device_id"]) & (o_time < t) & (o_time >= t - DAY_US)
            row[index["device_cards_1d"]] = len(set(orders["payment_id"][day].tolist()))
        if c_key.size:
            for key in CHARGEBACK_KEYS:
                if r[key] is not None:
                    known = (c_key == f"{KEY_TABLES[key]}:{r[key]}") & (c_time < t)
                    row[index[f"{key.removesuffix('_id')}_chargebacks"]] = len(set(c_sid[known].tolist()))
    return out


def _us(moment: datetime) -> int:
    """Microseconds since the epoch (a timezone-aware time)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def order_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Order rows (dicts) as one numpy array per column of ``ORDER_COLUMNS``, times in microseconds."""
    return _columns([tuple(_us(r[n]) if n in TIME_FIELDS else r[n] for n in ORDER_COLUMNS) for r in rows], ORDER_TYPES)


def _concat(parts: list[dict[str, np.ndarray]], schema: dict) -> dict[str, np.ndarray]:
    return {name: np.concatenate([part[name] for part in parts]) for name in schema}


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


class OrderScorer:
    """The fraud pyfunc (``FraudPyfunc``), the feature snapshot and the orders scored since."""

    def __init__(self, pyfunc, snapshot, recent: str | None = None) -> None:
        """``recent``: where the orders scored since are kept (``RecentOrders``; None: the default)."""
        self.pyfunc, self.snapshot = pyfunc, snapshot
        self.recent = RecentOrders(recent, covered_until=snapshot.cutoff)

    def features(self, requests: list[dict]) -> np.ndarray:
        """The feature matrix (``DENSE`` columns) of these order rows, as of each one's time, from
        the snapshot's and the recent orders of their keys; in the same order."""
        keys = {k: [r[k] for r in requests if r[k] is not None] for k in KEY_TABLES}
        order_keys, seen_keys = lookup_keys(keys, KEY_TABLES), lookup_keys(keys, SEEN_KEYS)
        charge_keys = lookup_keys(keys, CHARGEBACK_KEYS)
        snapshot_orders = self.snapshot.arrays("orders", order_keys)
        snapshot_seen = self.snapshot.arrays("seen", seen_keys)
        recent_orders, recent_seen, recent_chargebacks = self.recent.arrays(order_keys, seen_keys, charge_keys)
        # Each order once (it is found under each of its keys), the first of: the request itself (so
        # that a replayed order's own earlier copy is dropped), the snapshot's copy, the one kept since.
        orders = _concat([order_columns(requests), snapshot_orders, recent_orders], ORDER_COLUMNS)
        first = np.sort(np.unique(orders["session_id"], return_index=True)[1])
        orders = {name: column[first] for name, column in orders.items()}
        seen = _concat([snapshot_seen, recent_seen], SEEN_COLUMNS)
        charged = _concat([self.snapshot.arrays("chargebacks", charge_keys), recent_chargebacks], CHARGEBACK_COLUMNS)
        return online_matrix(requests, orders, seen, charged)

    def feature_rows(self, requested: pl.DataFrame) -> pl.DataFrame:
        """``features`` of order rows given as a frame (``order_frame``), as a frame with ``session_id``."""
        matrix = self.features(requested.to_dicts())
        return requested.select("session_id").with_columns(
            pl.Series(name, matrix[:, j], dtype=pl.Float64) for j, name in enumerate(DENSE)
        )

    def score_requests(self, requests: list[list[Order]], remember: bool = True) -> list[list[dict]]:
        """The orders of a batch of requests: features in one step, one model call; per request,
        each order's id, score, band and reasons. Orders scored from their keys are remembered
        (``remember``; False: the caller calls ``remember`` with the answers, before the next batch)."""
        flat = [o for orders in requests for o in orders]
        rows = order_rows(flat)
        keyed = [i for i, o in enumerate(flat) if o.features is None]
        matrix = np.empty((len(flat), len(DENSE)), dtype=np.float64)
        if keyed:
            matrix[keyed] = self.features([rows[i] for i in keyed])
        for i, o in enumerate(flat):
            if o.features is not None:
                matrix[i] = [o.features[f] for f in DENSE]
        scores, reasons = self.pyfunc.score_matrix(matrix)
        bands = self.pyfunc.bands.decide(scores)
        if keyed and remember:
            self.recent.add([rows[i] for i in keyed])
        answers = [
            {"order_id": r["session_id"], "score": float(s), "band": str(b), "reasons": why}
            for r, s, b, why in zip(rows, scores, bands, reasons, strict=True)
        ]
        out, start = [], 0
        for orders in requests:
            out.append(answers[start : start + len(orders)])
            start += len(orders)
        return out

    def record_chargebacks(self, chargebacks: list[Chargeback]) -> int:
        """Keep chargebacks reported since the snapshot: the next orders of their accounts, devices
        and cards count them. How many were new. A key a notice leaves out is the order's, as the
        service saw it (the orders scored since, then the snapshot's), as training takes it
        (``orders.charged_back``); a notice of an order never seen, without its account, raises
        ``UnknownOrder`` naming it, and none of the request's chargebacks is kept."""
        return self.recent.add_chargebacks(self.complete_chargebacks(chargebacks))

    def complete_chargebacks(self, chargebacks: list[Chargeback]) -> list[Chargeback]:
        """These chargebacks with the keys they leave out filled from their orders (see
        ``record_chargebacks``)."""
        wanted = sorted({c.order_id for c in chargebacks if any(getattr(c, k) is None for k in CHARGEBACK_KEYS)})
        seen = self.recent.order_keys(wanted)
        older = [i for i in wanted if i not in seen]
        if older and "order_keys" in self.snapshot.tables:  # a snapshot cut before it held no such table
            found = self.snapshot.arrays("order_keys", older)
            for n, order_id in enumerate(found["session_id"]):
                seen.setdefault(order_id, {k: found[k][n] for k in CHARGEBACK_KEYS})
        out = []
        for i, c in enumerate(chargebacks):
            order = seen.get(c.order_id, {})
            filled = {k: order.get(k) for k in CHARGEBACK_KEYS if getattr(c, k) is None and order.get(k) is not None}
            if c.user_id is None and "user_id" not in filled:
                raise UnknownOrder(
                    f"chargebacks[{i}].order_id: order {c.order_id!r} is unknown to this service (not in its "
                    "snapshot, not scored since); send the order's user_id (and its device_id, payment_id)"
                )
            out.append(c.model_copy(update=filled) if filled else c)
        return out

    def record_signups(self, signups: list[Signup]) -> int:
        """Keep sign-ups reported since the snapshot: the next orders of their accounts know how
        old they are. How many were new (or earlier than one kept)."""
        return self.recent.add_signups(signups)

    def record_sessions(self, sessions: list[Session]) -> int:
        """Keep sessions begun since the snapshot: an account that browsed before its first order
        is known as seen, on that device and from that country. How many told something new."""
        return self.recent.add_sessions(sessions)

    def remember(self, requests: list[list[Order]], answers: Sequence[list[dict]]) -> None:
        """Keep the orders of answered requests that were scored from their keys, under the ids
        they were answered with: the next requests' velocities count them."""
        flat = [o for orders in requests for o in orders]
        ids = [a["order_id"] for answered in answers for a in answered]
        rows = order_rows(flat, ids)
        keyed = [row for o, row in zip(flat, rows, strict=True) if o.features is None]
        if keyed:
            self.recent.add(keyed)
