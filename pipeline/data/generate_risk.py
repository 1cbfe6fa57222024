"""The generated shop's risk side: where each event came from, account sign-ups, and fraud.

Every genuine user has a home device, network address and country and a payment instrument (a
fingerprint); a session comes from the home device most of the time, from a second one now and
then. Genuine customers also do what fraud does, as real ones do, so that no single sign gives
fraud away: some households share one device between two accounts (``P_HOUSEHOLD``), some customers
pay with a second card now and then (``P_SECOND_CARD``), and a session may come from abroad, a
traveller's own device on a roaming address (``P_TRAVEL``), from a brand-new device
(``P_NEW_DEVICE``), or from another address of the user's network (``P_NEW_ADDRESS``: a phone on
its carrier's network, a re-leased home address). Users created during the simulation sign up
(a ``signup`` event) minutes before their first session. On top of the genuine traffic,
``GenerateParams.fraud_rate`` (a share of the day's genuine orders) of fraudulent orders are added,
each from one of four scenarios with its own behaviour, a share of each disguised (``DISGUISED``):

* ``card_testing``: one new account and device place a burst of small orders, each paid with
  another card fingerprint, seconds apart (disguised: minutes apart, past the short windows);
* ``account_takeover``: an existing user's account, from a device never seen for it, buys expensive
  items, from a foreign country (disguised: from the user's own country, through a residential
  address);
* ``new_account``: an account signs up and buys expensive items within minutes (disguised: an aged
  account, signed up days before the order);
* ``reseller``: several new accounts share one payment instrument and buy the same item, from one
  device (disguised: a device each, one network address).

Fraud comes from data-centre addresses (``172.*``), and the disguised share from residential ones
that look like customers' (``10.*``). An undisguised fraud goes straight to what it buys; a
disguised one browses other items first, minutes long, as a customer's session does (``_browsing``).

**First-party fraud** (``GenerateParams.first_party_rate``, off by default): a genuine customer
disputes their own order, placed like any other, from their own device and card. A share of
customers (``P_DISPUTER``) do so now and then, their dearer orders more often. Nothing at the
order tells it from a genuine one; only its chargeback does, and it is listed in the truth file as
scenario ``first_party``.

Each fraudulent order is confirmed by a ``chargeback`` (the whole order: no item, the amount paid)
some days later (3 to 60, skewed short), written into the file of the day it arrives; one that would
arrive after the last generated day is not written, as in a real export, whose recent orders are
not yet labelled. ``truth/fraud.csv`` lists every fraudulent order with its scenario, whether it
was disguised, and the chargeback's time, for tests; the pipeline never reads it.

Its random draws come from streams of their own, so turning fraud on or off leaves every genuine
event as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.schema import EVENTS_SCHEMA

FRAUD_TRUTH_FILE = "truth/fraud.csv"
SCENARIOS = ("card_testing", "account_takeover", "new_account", "reseller")
SCENARIO_SHARE = np.array([0.3, 0.25, 0.3, 0.15])
COUNTRIES = ("DE", "FR", "NL", "GB", "ES", "IT", "PL", "SE", "US", "AT", "BE", "DK")
FOREIGN = ("NG", "RU", "BR", "VN", "ID", "UA", "RO", "PH")  # where takeovers come from here
P_SECOND_DEVICE = 0.15  # a genuine session from the user's other device
P_HOUSEHOLD = 0.08  # a genuine user shares the home device of the previous user (a household)
P_SECOND_CARD = 0.1  # a genuine user has a second card ...
P_USE_SECOND_CARD = 0.3  # ... and pays with it on this share of orders
P_TRAVEL = 0.02  # a genuine session from abroad: the user's device, a roaming address, another country
P_NEW_DEVICE = 0.01  # a genuine session from a device the user never used before (a new phone)
# A genuine session from an address of the user's network other than its usual one: a phone on its
# carrier's network, a home address the provider re-leased. Real customers' addresses change; with
# one address for good, "an address new to the account" singled out every takeover (make
# bench-fraud's shops, benchmarks/fraud_sessions.py), a sign real data does not give so cleanly.
P_NEW_ADDRESS = 0.2
# Per scenario, the share of incidents disguised as genuine behaviour (see the module's docstring).
DISGUISED = {"card_testing": 0.4, "account_takeover": 0.5, "new_account": 0.4, "reseller": 0.5}
AGED_ACCOUNT_DAYS = (1.0, 14.0)  # a disguised new account signs up this long before its order
FIRST_PARTY = "first_party"  # the truth file's scenario of a customer's own disputed order
P_DISPUTER = 0.1  # the share of genuine customers who dispute orders (with first_party_rate > 0)
CHARGEBACK_DAYS = (3.0, 60.0)
# Orders per incident, on average (card testing 4-11, a takeover or a new account 1, a ring 3-6):
# ``fraud_rate`` counts orders, so incidents are drawn at the rate over this.
ORDERS_PER_INCIDENT = 0.3 * 7.5 + 0.25 + 0.3 + 0.15 * 4.5


@dataclass
class RiskWorld:
    """Each genuine user's home device, second device, address, country and payment fingerprint."""

    device: np.ndarray
    second_device: np.ndarray
    ip: np.ndarray
    country: np.ndarray
    payment: np.ndarray
    second_payment: np.ndarray  # None for users with one card
    next_account: int  # the next user index fraud accounts take (past every genuine user)
    disputer: np.ndarray  # the genuine users who dispute orders now and then (first-party fraud)
    truth: list[dict] = field(default_factory=list)
    # Events of days not yet written (``due_events``): chargebacks, and the orders of aged accounts
    pending: list[pl.DataFrame] = field(default_factory=list)


def build_risk_world(n_users: int, seed: int) -> RiskWorld:
    rng = np.random.default_rng([seed, 17])
    countries = np.array(COUNTRIES)
    device = np.array([f"d{i}" for i in range(n_users)])
    ip = np.array([f"10.{a}.{b}.{c}" for a, b, c in rng.integers(0, 256, size=(n_users, 3))])
    country = countries[rng.choice(countries.size, size=n_users, p=_country_share())]
    # A household: the user shares the previous user's home device, address and country.
    household = np.flatnonzero(rng.random(n_users) < P_HOUSEHOLD)
    household = household[household > 0]
    for array in (device, ip, country):
        array[household] = array[household - 1]
    second_card = rng.random(n_users) < P_SECOND_CARD
    # A stream of its own, so that the draws above stay what they were before it existed.
    disputer = np.random.default_rng([seed, 31]).random(n_users) < P_DISPUTER
    return RiskWorld(
        device=device,
        second_device=np.array([f"d{i}b" for i in range(n_users)]),
        ip=ip,
        country=country,
        payment=np.array([f"p{i}" for i in range(n_users)]),
        second_payment=np.array([f"p{i}b" if two else None for i, two in enumerate(second_card)], dtype=object),
        next_account=n_users,
        disputer=disputer,
    )


def _country_share() -> np.ndarray:
    w = 1.0 / np.arange(1, len(COUNTRIES) + 1) ** 0.8
    return w / w.sum()


def add_context(events: pl.DataFrame, risk: RiskWorld, seed: int, day_index: int) -> pl.DataFrame:
    """The genuine events with their device, address, country and (on purchases) payment."""
    rng = np.random.default_rng([seed, 19, day_index])
    users = events["user_id"].str.strip_prefix("u").cast(pl.Int64).to_numpy()
    sessions = events["session_id"].to_numpy()
    unique, inverse = np.unique(sessions, return_inverse=True)
    draw = rng.random((unique.size, 4))
    second = (draw[:, 0] < P_SECOND_DEVICE)[inverse]
    travel = (draw[:, 1] < P_TRAVEL)[inverse]
    new_device = (draw[:, 2] < P_NEW_DEVICE)[inverse]
    second_card = (draw[:, 3] < P_USE_SECOND_CARD)[inverse]
    # Per session: where a traveller is, and the roaming address they are on.
    abroad = np.array(COUNTRIES + FOREIGN)[rng.integers(0, len(COUNTRIES) + len(FOREIGN), size=unique.size)][inverse]
    roaming = np.array([f"100.{a}.{b}.{c}" for a, b, c in rng.integers(0, 256, size=(unique.size, 3))])[inverse]
    device = np.where(second, risk.second_device[users], risk.device[users])
    device = np.where(new_device, np.char.add(f"dn{day_index}-", sessions.astype(str)), device)
    country = np.where(travel & (abroad != risk.country[users]), abroad, risk.country[users])
    ip = np.where(travel, roaming, risk.ip[users])
    # A stream of its own, so that every draw above stays what it was before it existed.
    churn = np.random.default_rng([seed, 23, day_index])
    moved = (churn.random(unique.size) < P_NEW_ADDRESS)[inverse] & ~travel
    # The same /16 as the home address (``10.a``), another host in it.
    network = pl.Series(risk.ip[users], dtype=pl.String).str.extract(r"^(\d+\.\d+)\.", 1).to_numpy().astype(str)
    host = np.array([f".{b}.{c}" for b, c in churn.integers(0, 256, size=(unique.size, 2))], dtype=str)[inverse]
    ip = np.where(moved, np.char.add(network, host), ip)
    card = np.where(second_card & (risk.second_payment[users] != None), risk.second_payment[users], risk.payment[users])  # noqa: E711
    purchase = (events["event_type"] == "purchase").to_numpy()
    return events.with_columns(
        pl.Series("device_id", device),
        pl.Series("ip", ip),
        pl.Series("country", country),
        pl.Series("payment_id", [p if b else None for p, b in zip(card, purchase, strict=True)], pl.String),
    )


def signups(new_users: np.ndarray, first_seen: dict[int, float], day_start: datetime, risk: RiskWorld) -> list[dict]:
    """``signup`` events of the users created today, 1 to 30 minutes before their first session."""
    rng = np.random.default_rng([int(day_start.timestamp()), 23])
    out = []
    for u in new_users:
        seen = first_seen.get(int(u))
        if seen is None:
            continue
        at = max(day_start.timestamp(), seen - rng.uniform(60, 1800))
        out.append(
            _event(at, int(u), f"signup-u{u}", None, "signup", None, 1, risk.device[u], risk.ip[u], risk.country[u])
        )
    return out


def _event(t, user, session, item, kind, price, qty, device, ip, country, payment=None) -> dict:
    return {
        "event_time": datetime.fromtimestamp(float(t), tz=timezone.utc),
        "user_id": f"u{user}",
        "session_id": session,
        "item_id": item,
        "event_type": kind,
        "price": None if price is None else round(float(price), 2),
        "quantity": int(qty),
        "device_id": device,
        "ip": ip,
        "country": country,
        "payment_id": payment,
    }


def fraud_day(
    risk: RiskWorld,
    rate: float,
    genuine_orders: int,
    day_index: int,
    day_start: datetime,
    live_users: np.ndarray,
    live_items: np.ndarray,
    prices: np.ndarray,
    seed: int,
    chargeback_days: tuple[float, float] = CHARGEBACK_DAYS,
) -> list[dict]:
    """The day's fraudulent orders (views, cart adds, purchases, sign-ups) as event rows; their
    chargebacks are queued in ``risk.pending``, and each order is added to ``risk.truth``."""
    rng = np.random.default_rng([seed, 13, day_index])
    # The disguised orders' browsing: a stream of its own, so the incidents stay as they were drawn.
    browse = np.random.default_rng([seed, 29, day_index])
    n = rng.poisson(rate * genuine_orders / ORDERS_PER_INCIDENT) if rate > 0 else 0
    if n == 0 or live_items.size == 0:
        return []
    order = np.argsort(prices, kind="stable")  # equal prices in item order on every CPU
    cheap = live_items[order[: max(1, order.size // 10)]]
    dear = live_items[order[-max(1, order.size // 10) :]]
    price_of = dict(zip(live_items.tolist(), prices.tolist(), strict=True))
    rows: list[dict] = []
    tag = day_start.strftime("%Y%m%d")
    for k, scenario in enumerate(rng.choice(len(SCENARIOS), size=n, p=SCENARIO_SHARE)):
        name = SCENARIOS[scenario]
        disguised = bool(rng.random() < DISGUISED[name])
        t0 = day_start.timestamp() + rng.uniform(0, 86_000)
        ip = _ip(rng, residential=disguised)
        # Per order: account, session, items, time, device, address, country, card, and the earliest
        # its session may begin (the account's sign-up, the incident's previous order).
        orders: list[tuple[int, str, list[int], float, str, str, str, str, float]] = []
        if name == "card_testing":
            user = risk.next_account
            risk.next_account += 1
            device, country = f"fd{tag}-{k}", str(rng.choice(COUNTRIES if disguised else FOREIGN))
            rows.append(_event(t0, user, f"signup-u{user}", None, "signup", None, 1, device, ip, country))
            t = t0 + rng.uniform(30, 300)
            for j in range(int(rng.integers(4, 12))):
                floor = t
                t += rng.uniform(180, 1800) if disguised else rng.uniform(20, 90)
                orders.append(
                    (
                        user,
                        f"f{tag}-{k}-{j}",
                        [int(rng.choice(cheap))],
                        t,
                        device,
                        ip,
                        country,
                        f"fp{tag}-{k}-{j}",
                        floor,
                    )
                )
        elif name == "account_takeover":
            user = int(rng.choice(live_users))
            device = f"fd{tag}-{k}"
            country = str(risk.country[user]) if disguised else str(rng.choice(FOREIGN))
            items = [int(i) for i in rng.choice(dear, size=int(rng.integers(1, 4)))]
            orders.append((user, f"f{tag}-{k}", items, t0, device, ip, country, str(risk.payment[user]), t0 - 3_600))
        elif name == "new_account":
            user = risk.next_account
            risk.next_account += 1
            device, country = f"fd{tag}-{k}", str(rng.choice(COUNTRIES if disguised else COUNTRIES + FOREIGN))
            rows.append(_event(t0, user, f"signup-u{user}", None, "signup", None, 1, device, ip, country))
            wait = rng.uniform(*AGED_ACCOUNT_DAYS) * 86_400 if disguised else rng.uniform(60, 900)
            items = [int(i) for i in rng.choice(dear, size=int(rng.integers(1, 3)))]
            orders.append((user, f"f{tag}-{k}", items, t0 + wait, device, ip, country, f"fp{tag}-{k}", t0))
        else:  # reseller: several accounts, one card, the same item; one device (disguised: one each)
            device, country = f"fd{tag}-{k}", str(rng.choice(COUNTRIES))
            item = int(rng.choice(dear))
            t = t0
            for j in range(int(rng.integers(3, 7))):
                user = risk.next_account
                risk.next_account += 1
                own = f"{device}-{j}" if disguised else device
                rows.append(_event(t, user, f"signup-u{user}", None, "signup", None, 1, own, ip, country))
                floor = t
                t += rng.uniform(120, 1200)
                orders.append((user, f"f{tag}-{k}-{j}", [item], t, own, ip, country, f"fp{tag}-{k}", floor))
        day_end = day_start.timestamp() + 86_400
        for user, session, items, t, device, ip, country, payment, floor in orders:
            total = 0.0
            # An order past today (an aged account's) waits in the queue for its day's file.
            target: list[dict] = rows if t < day_end else []
            # Today's events go to today's file, so none may lie before today: ingestion reads a
            # day's file for that day alone, and an earlier row would be left outside every
            # interval. (A queued order's events go to the file of the day each one lies in.)
            lowest = day_start.timestamp() if target is rows else -np.inf
            if disguised:
                for at, i in _browsing(browse, max(floor, lowest), t, live_items):
                    target.append(_event(at, user, session, f"i{i}", "view", price_of[i], 1, device, ip, country))
            for i in items:
                at = max(t - rng.uniform(20, 120), lowest)
                item_id, price = f"i{i}", price_of[i]
                target.append(_event(at, user, session, item_id, "view", price, 1, device, ip, country))
                target.append(_event(at + 5, user, session, item_id, "add_to_cart", price, 1, device, ip, country))
                target.append(_event(t, user, session, item_id, "purchase", price, 1, device, ip, country, payment))
                total += price
            if target is not rows:
                risk.pending.append(pl.DataFrame(target, schema=_SCHEMA))
            at = t + _chargeback_delay_days(rng, chargeback_days) * 86_400
            cb = _event(at, user, session, None, "chargeback", total, 1, None, None, None)
            risk.pending.append(pl.DataFrame([cb], schema=_SCHEMA))
            risk.truth.append(
                {
                    "session_id": session,
                    "user_id": f"u{user}",
                    "scenario": name,
                    "disguised": disguised,
                    "order_time": datetime.fromtimestamp(t, tz=timezone.utc),
                    "amount": round(total, 2),
                    "chargeback_time": datetime.fromtimestamp(at, tz=timezone.utc),
                }
            )
    return rows


# A disguised order's browsing before the items it buys: this many other items viewed (1 + a
# Poisson draw of the mean), over a span drawn from this range (seconds), as a customer's session.
BROWSE_VIEWS = 3.0
BROWSE_SPAN_S = (150.0, 1500.0)


def _browsing(rng: np.random.Generator, floor: float, t: float, live_items: np.ndarray) -> list[tuple[float, int]]:
    """(time, item) views of other items before an order at ``t``, none before ``floor`` + 1 s and
    none in the last 121 s (where the order's own items are viewed). Without them every generated
    fraud went straight to what it bought (benchmarks/fraud_sessions.py); a disguised one now
    browses as customers do."""
    n = 1 + int(rng.poisson(BROWSE_VIEWS))
    start = max(floor + 1.0, t - rng.uniform(*BROWSE_SPAN_S))
    times = np.sort(rng.uniform(start, t - 121.0, size=n)) if start < t - 121.0 else np.array([])
    return [(float(at), int(rng.choice(live_items))) for at in times]


def _chargeback_delay_days(rng: np.random.Generator, chargeback_days: tuple[float, float]) -> float:
    """Skewed short within [first, last] days: with the default (3, 60), a gamma of mean 12 days."""
    first, last = chargeback_days
    return float(min(first + rng.gamma(1.5, 8.0 * (last - first) / 57.0), last))


def first_party_day(
    risk: RiskWorld,
    events: pl.DataFrame,
    rate: float,
    day_index: int,
    seed: int,
    chargeback_days: tuple[float, float] = CHARGEBACK_DAYS,
) -> None:
    """Of the day's genuine orders (``events``' purchases, one order a session), about ``rate`` are
    disputed by the customers who placed them: drawn among the orders of ``risk.disputer`` users,
    in proportion to their amount. Each one's chargeback is queued in ``risk.pending`` and the
    order added to ``risk.truth`` (scenario ``FIRST_PARTY``, ``disguised``: it looks genuine)."""
    if rate <= 0:
        return
    rng = np.random.default_rng([seed, 29, day_index])
    orders = (
        events.filter(pl.col("event_type") == "purchase")
        .group_by("session_id")
        .agg(
            pl.col("user_id").first(),
            pl.col("event_time").min().alias("order_time"),
            (pl.col("price").fill_null(0.0) * pl.col("quantity")).sum().alias("amount"),
        )
        .sort("session_id")
    )
    if orders.height == 0:
        return
    users = orders["user_id"].str.strip_prefix("u").cast(pl.Int64).to_numpy()
    pool = np.flatnonzero(risk.disputer[users] & (orders["amount"].to_numpy() > 0))
    n = min(int(rng.binomial(orders.height, rate)), pool.size)
    if n == 0:
        return
    weight = orders["amount"].to_numpy()[pool]
    chosen = np.sort(rng.choice(pool, size=n, replace=False, p=weight / weight.sum()))
    rows = []
    for i in chosen:
        session, user, t, total = orders.row(int(i))
        at = t.timestamp() + _chargeback_delay_days(rng, chargeback_days) * 86_400
        rows.append(_event(at, int(user[1:]), session, None, "chargeback", total, 1, None, None, None))
        risk.truth.append(
            {
                "session_id": session,
                "user_id": user,
                "scenario": FIRST_PARTY,
                "disguised": True,
                "order_time": t,
                "amount": round(float(total), 2),
                "chargeback_time": datetime.fromtimestamp(at, tz=timezone.utc),
            }
        )
    risk.pending.append(pl.DataFrame(rows, schema=_SCHEMA))


def _ip(rng: np.random.Generator, residential: bool = False) -> str:
    """A data-centre address (``172.*``), or a residential one like a customer's (``10.*``)."""
    a, b, c = rng.integers(0, 256, size=3)
    return f"{10 if residential else 172}.{a}.{b}.{c}"


_SCHEMA: dict[str, pl.DataType] = dict(EVENTS_SCHEMA)


def rows_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_SCHEMA) if rows else pl.DataFrame(schema=_SCHEMA)


def due_events(risk: RiskWorld, before: datetime) -> pl.DataFrame:
    """The queued events (chargebacks, aged accounts' orders) that happen before ``before``
    (removed from the queue)."""
    if not risk.pending:
        return rows_frame([])
    queued = pl.concat(risk.pending)
    due = queued.filter(pl.col("event_time") < before)
    rest = queued.filter(pl.col("event_time") >= before)
    risk.pending = [rest] if rest.height else []
    return due


def write_fraud_truth(risk: RiskWorld, landing: Path, end: datetime | None = None) -> Path:
    """``truth/fraud.csv``: the fraudulent orders placed before ``end`` (an aged account's order
    queued past the last generated day never happened in the data)."""
    path = landing / FRAUD_TRUTH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    schema: dict[str, pl.DataType] = {
        "session_id": pl.String(),
        "user_id": pl.String(),
        "scenario": pl.String(),
        "disguised": pl.Boolean(),
        "order_time": pl.Datetime("us", "UTC"),
        "amount": pl.Float64(),
        "chargeback_time": pl.Datetime("us", "UTC"),
    }
    truth = pl.DataFrame(risk.truth, schema=schema)
    if end is not None:
        truth = truth.filter(pl.col("order_time") < end)
    truth.write_csv(path)
    return path


def first_session_times(events: pl.DataFrame) -> dict[int, float]:
    """Each user's first event time today (epoch seconds)."""
    first = events.group_by("user_id").agg(pl.col("event_time").min())
    return {
        int(u[1:]): t.timestamp()
        for u, t in zip(first["user_id"].to_list(), first["event_time"].to_list(), strict=True)
    }


def new_users_of(user_created: np.ndarray, day_index: int) -> np.ndarray:
    return np.flatnonzero(user_created == day_index) if day_index > 0 else np.zeros(0, dtype=np.int64)
