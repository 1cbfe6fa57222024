"""Orders, their late labels, and their features as of the order's time.

An **order** is the purchases of one session: its time is the first purchase's, its amount the sum
of price x quantity, its device, address, country and payment the purchase's. A **label** comes
late: an order is fraud once a ``chargeback`` of its session has arrived, genuine only once the
maturity window (``maturity_days``) has passed without one, and **unknown** before that. Whoever
asks as of a time gets the labels known then, never later ones: a training cutoff at ``t`` sees a
chargeback dated after ``t`` as nothing, and an order younger than the window as unlabelled (left
out, not counted as genuine).

**Features** of an order read only events strictly before the order's time (the velocity counts,
the account's age, the devices and cards seen before, the chargebacks that had arrived on its
account, device and card). ``order_features`` computes them for every
order at once with as-of joins and left-closed rolling windows; the tests recompute a sample of
orders from the events before each one alone and require the same values.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

# Rolling windows of the velocity counts, as polars durations, and their feature-name suffixes.
WINDOWS: tuple[tuple[str, str], ...] = (("10m", "10m"), ("1h", "1h"), ("1d", "1d"), ("7d", "7d"), ("30d", "30d"))
KEYS = ("user_id", "device_id", "ip", "payment_id")
# The keys whose earlier chargebacks an order's features count (a risk team's negative lists).
CHARGEBACK_KEYS = ("user_id", "device_id", "payment_id")
# An account whose sign-up the data does not hold is older than the data: its age is this many days.
UNKNOWN_ACCOUNT_AGE_DAYS = 365.0
# The windows (of ``WINDOWS``) over which an order counts the other accounts that ordered from its
# network address: a ring of accounts behind one address (``ip_accounts_<window>``).
IP_ACCOUNT_WINDOWS = ("1d", "30d")

DENSE: tuple[str, ...] = (
    *(f"{key.removesuffix('_id')}_orders_{suffix}" for key in KEYS for _, suffix in WINDOWS),
    *(f"{key.removesuffix('_id')}_amount_{suffix}" for key in ("user_id", "device_id") for _, suffix in WINDOWS[2:]),
    "amount",
    "log_amount",
    "items",
    "account_age_days",
    "account_age_known",
    "amount_vs_user_mean",
    "user_prior_orders",
    "user_seen_before",
    "new_device_for_user",
    "new_country_for_user",
    "device_accounts",
    "payment_accounts",
    "device_cards_1d",
    "seconds_since_user_last_order",
    # Appended after the rest, so that a scorer trained before them reads the first columns as it
    # did (``pyfunc.LEGACY_FEATURES``).
    *(f"{key.removesuffix('_id')}_chargebacks" for key in CHARGEBACK_KEYS),
    *(f"ip_accounts_{suffix}" for suffix in IP_ACCOUNT_WINDOWS),
    # How long the order's session had run (its first event to the order, whole seconds): a bot
    # goes straight to what it buys, a customer browses.
    "session_seconds",
    # The order's network address was not that of any earlier order of the account: a takeover's
    # session comes from the fraudster's address, as does a customer's on a new network.
    "new_ip_for_user",
)


def orders_of(events: pl.DataFrame) -> pl.DataFrame:
    """One row per order (the purchases of a session), in time order, with ``session_start``: the
    session's first event (what the order's own browsing is not "before")."""
    purchases = events.filter(pl.col("event_type") == "purchase")
    starts = (
        events.join(purchases.select("session_id").unique(), on="session_id", how="semi")
        .group_by("session_id")
        .agg(pl.col("event_time").min().alias("session_start"))
    )
    return (
        purchases.join(starts, on="session_id", how="left")
        .group_by("session_id")
        .agg(
            pl.col("user_id").first(),
            pl.col("event_time").min().alias("order_time"),
            (pl.col("price").fill_null(0.0) * pl.col("quantity")).sum().alias("amount"),
            pl.col("quantity").sum().cast(pl.Float64).alias("items"),
            pl.col("session_start").first(),
            *(pl.col(c).drop_nulls().first().alias(c) for c in ("device_id", "ip", "country", "payment_id")),
        )
        .sort("order_time", "session_id")
    )


def labels_as_of(orders: pl.DataFrame, events: pl.DataFrame, as_of: datetime, maturity_days: int) -> pl.DataFrame:
    """The orders placed before ``as_of`` with the label known then: ``label`` 1 (a chargeback had
    arrived), 0 (the maturity window had passed without one) or null (not yet known), and
    ``label_time``, when it became known."""
    charged = first_chargebacks(events).filter(pl.col("chargeback_time") < as_of)
    mature = pl.col("order_time") + timedelta(days=maturity_days)
    return (
        orders.filter(pl.col("order_time") < as_of)
        .join(charged, on="session_id", how="left")
        .with_columns(
            pl.when(pl.col("chargeback_time").is_not_null())
            .then(1.0)
            .when(mature <= as_of)
            .then(0.0)
            .otherwise(None)
            .alias("label"),
            pl.when(pl.col("chargeback_time").is_not_null())
            .then(pl.col("chargeback_time"))
            .when(mature <= as_of)
            .then(mature)
            .otherwise(None)
            .alias("label_time"),
        )
        .drop("chargeback_time")
    )


def _rolling(orders: pl.DataFrame, key: str) -> pl.DataFrame:
    """Per order: how many orders (and how much) the same ``key`` placed in each window before it
    (left-closed: an order at the very same microsecond is not before)."""
    name = key.removesuffix("_id")
    keyed = (
        orders.filter(pl.col(key).is_not_null())
        .select("session_id", key, "order_time", "amount")
        .sort(key, "order_time")
    )
    out = keyed.select("session_id", key, "order_time")
    for period, suffix in WINDOWS:
        aggs = [pl.len().cast(pl.Float64).alias(f"{name}_orders_{suffix}")]
        if key in ("user_id", "device_id") and suffix in ("1d", "7d", "30d"):
            aggs.append(pl.col("amount").sum().cast(pl.Float64).alias(f"{name}_amount_{suffix}"))
        window = keyed.rolling("order_time", period=period, group_by=key, closed="left").agg(aggs)
        # Orders of one key at the same time share a window: one row per (key, time) joins back.
        out = out.join(window.unique(subset=[key, "order_time"]), on=[key, "order_time"], how="left")
    return out.drop(key, "order_time")


def _ip_accounts(orders: pl.DataFrame) -> pl.DataFrame:
    """Per order: how many other accounts had ordered from its network address in each window of
    ``IP_ACCOUNT_WINDOWS`` before it (left-closed, as ``_rolling``): the accounts of the address's
    orders in the window, less the order's own account if it was among them."""
    keyed = (
        orders.filter(pl.col("ip").is_not_null())
        .select("session_id", "ip", "user_id", "order_time")
        .sort("ip", "order_time")
    )
    out = keyed
    periods = {suffix: period for period, suffix in WINDOWS}
    for suffix in IP_ACCOUNT_WINDOWS:
        period = periods[suffix]
        everyone = keyed.rolling("order_time", period=period, group_by="ip", closed="left").agg(
            pl.col("user_id").n_unique().alias("_accounts")
        )
        own = keyed.rolling("order_time", period=period, group_by=["ip", "user_id"], closed="left").agg(
            pl.len().alias("_own")
        )
        out = (
            out.join(everyone.unique(subset=["ip", "order_time"]), on=["ip", "order_time"], how="left")
            .join(own.unique(subset=["ip", "user_id", "order_time"]), on=["ip", "user_id", "order_time"], how="left")
            .with_columns(
                (pl.col("_accounts") - (pl.col("_own") > 0).cast(pl.Int64))
                .cast(pl.Float64)
                .alias(f"ip_accounts_{suffix}")
            )
            .drop("_accounts", "_own")
        )
    return out.drop("ip", "user_id", "order_time")


def order_features(orders: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """``orders`` (from ``orders_of``) with every feature of ``DENSE``, each from events strictly
    before the order's time."""
    base = orders.with_columns(
        pl.col("amount").log1p().alias("log_amount"),
    )
    for key in KEYS:
        base = base.join(_rolling(orders, key), on="session_id", how="left")
    # The account's age: its sign-up before the order.
    signups = (
        events.filter(pl.col("event_type") == "signup")
        .group_by("user_id")
        .agg(pl.col("event_time").min().alias("signed_up"))
    )
    base = base.join(signups, on="user_id", how="left").with_columns(
        pl.when(pl.col("signed_up") < pl.col("order_time"))
        .then((pl.col("order_time") - pl.col("signed_up")).dt.total_seconds() / 86_400)
        .otherwise(UNKNOWN_ACCOUNT_AGE_DAYS)
        .alias("account_age_days"),
        (pl.col("signed_up") < pl.col("order_time")).fill_null(False).cast(pl.Float64).alias("account_age_known"),
    )
    # The user's earlier orders: how many, their mean amount, the last one's time.
    # In (time, id) order, as the service numbers them.
    by_user = orders.sort("user_id", "order_time", "session_id").with_columns(
        pl.col("amount").cum_sum().shift(1).over("user_id").alias("_prior_amount"),
        pl.col("order_time").shift(1).over("user_id").alias("_prior_time"),
        pl.int_range(pl.len()).over("user_id").cast(pl.Float64).alias("user_prior_orders"),
        # The account's first order from this address (an order without one is not new).
        (pl.col("ip").is_not_null() & (pl.int_range(pl.len()).over("user_id", "ip") == 0))
        .cast(pl.Float64)
        .alias("new_ip_for_user"),
    )
    base = base.join(
        by_user.select("session_id", "_prior_amount", "_prior_time", "user_prior_orders", "new_ip_for_user"),
        on="session_id",
        how="left",
    ).with_columns(
        (pl.col("order_time") - pl.col("session_start")).dt.total_seconds().cast(pl.Float64).alias("session_seconds"),
        # Against the user's mean amount; after only free orders (a mean of 0), against one unit
        # of the currency, not a division by zero (an infinite feature, a NaN for 0 / 0).
        pl.when(pl.col("user_prior_orders") > 0)
        .then(pl.col("amount") / _unit_if_free(pl.col("_prior_amount") / pl.col("user_prior_orders")))
        .otherwise(1.0)
        .alias("amount_vs_user_mean"),
        pl.when(pl.col("_prior_time").is_not_null())
        .then((pl.col("order_time") - pl.col("_prior_time")).dt.total_seconds())
        .otherwise(UNKNOWN_ACCOUNT_AGE_DAYS * 86_400)
        .alias("seconds_since_user_last_order"),
    )
    base = base.join(_first_seen_flags(orders, events), on="session_id", how="left")
    charged = charged_back(orders, events)
    for key in CHARGEBACK_KEYS:
        base = base.join(_chargebacks_before(orders, charged, key), on="session_id", how="left")
    base = base.join(_ip_accounts(orders), on="session_id", how="left")
    return base.drop("signed_up", "_prior_amount", "_prior_time").with_columns(
        pl.col(c).fill_null(0.0).cast(pl.Float64) for c in DENSE
    )


def first_chargebacks(events: pl.DataFrame) -> pl.DataFrame:
    """Per charged-back session (order): ``chargeback_time``, when its first chargeback arrived."""
    return (
        events.filter(pl.col("event_type") == "chargeback")
        .group_by("session_id")
        .agg(pl.col("event_time").min().alias("chargeback_time"))
    )


def charged_back(orders: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """The charged-back orders: ``session_id``, their keys (``CHARGEBACK_KEYS``) and
    ``chargeback_time``, when their first chargeback arrived."""
    return orders.select("session_id", *CHARGEBACK_KEYS).join(first_chargebacks(events), on="session_id")


def _chargebacks_before(orders: pl.DataFrame, charged: pl.DataFrame, key: str) -> pl.DataFrame:
    """Per order: how many orders of the same ``key`` had been charged back before the order's time
    (a chargeback at the very same microsecond is not before)."""
    name = f"{key.removesuffix('_id')}_chargebacks"
    # Running count per key, in time order: the last row before an order is how many there were.
    known = (
        charged.filter(pl.col(key).is_not_null())
        .sort("chargeback_time", "session_id")
        .select(key, "chargeback_time", pl.int_range(1, pl.len() + 1).over(key).cast(pl.Float64).alias(name))
    )
    return (
        orders.filter(pl.col(key).is_not_null())
        .select("session_id", key, "order_time")
        .sort("order_time")
        .join_asof(
            known,
            left_on="order_time",
            right_on="chargeback_time",
            by=key,
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # both sorted by time above (with ``by``, polars cannot check it)
        )
        .select("session_id", name)
    )


def _unit_if_free(mean: pl.Expr) -> pl.Expr:
    return pl.when(mean > 0).then(mean).otherwise(1.0)


def _first_seen(events: pl.DataFrame, a: str, b: str) -> pl.DataFrame:
    """When each (a, b) pair first appeared in the events (any kind of event)."""
    return (
        events.filter(pl.col(a).is_not_null() & pl.col(b).is_not_null())
        .group_by(a, b)
        .agg(pl.col("event_time").min().alias("first"))
    )


def _first_seen_flags(orders: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Whether the user had been seen at all, whether the order's device and country were new for
    the user, and how many other accounts
    had used its device and its card, before the order's session began; how many cards its device
    paid with in the day before the order."""
    o = orders.select("session_id", "user_id", "device_id", "country", "payment_id", "order_time", "session_start")
    # Seen before the session began: the order's own browsing (same device, same country) is not
    # evidence that the user had used them.
    before = pl.col("first") < pl.col("session_start")

    def seen(a: str, b: str) -> pl.DataFrame:
        """Per order whose ``b`` is known: whether the user had shown that ``b`` before."""
        pairs = _first_seen(events, a, b)
        return (
            o.filter(pl.col(b).is_not_null())
            .join(pairs, on=[a, b], how="left")
            .select("session_id", before.fill_null(False).alias("_seen"))
            .group_by("session_id")
            .agg(pl.col("_seen").any())
        )

    def accounts(key: str, name: str) -> pl.DataFrame:
        pairs = _first_seen(events, key, "user_id").rename({"user_id": "_other"})
        return (
            o.join(pairs, on=key, how="left")
            .group_by("session_id")
            .agg(
                pl.col("_other")
                .filter(before & (pl.col("_other") != pl.col("user_id")))
                .n_unique()
                .cast(pl.Float64)
                .alias(name)
            )
        )

    cards = (
        o.filter(pl.col("device_id").is_not_null())
        .join(
            orders.select("device_id", pl.col("payment_id").alias("_card"), pl.col("order_time").alias("_t")),
            on="device_id",
        )
        .filter((pl.col("_t") < pl.col("order_time")) & (pl.col("_t") >= pl.col("order_time") - timedelta(days=1)))
        .group_by("session_id")
        .agg(pl.col("_card").n_unique().cast(pl.Float64).alias("device_cards_1d"))
    )
    first_event = events.group_by("user_id").agg(pl.col("event_time").min().alias("_first_event"))
    known = o.join(first_event, on="user_id", how="left").select(
        "session_id",
        (pl.col("_first_event") < pl.col("session_start")).fill_null(False).cast(pl.Float64).alias("user_seen_before"),
    )
    device = seen("user_id", "device_id").select(
        "session_id", (~pl.col("_seen")).cast(pl.Float64).alias("new_device_for_user")
    )
    country = seen("user_id", "country").select(
        "session_id", (~pl.col("_seen")).cast(pl.Float64).alias("new_country_for_user")
    )
    return (
        o.select("session_id")
        .join(known, on="session_id", how="left")
        .join(device, on="session_id", how="left")
        .join(country, on="session_id", how="left")
        .join(accounts("device_id", "device_accounts"), on="session_id", how="left")
        .join(accounts("payment_id", "payment_accounts"), on="session_id", how="left")
        .join(cards, on="session_id", how="left")
    )
