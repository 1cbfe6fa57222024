"""Adapters: each turns one public source layout into the canonical model, row for row.

An adapter only maps columns; it never drops a row. Parsing, checking and quarantining happen once,
in :mod:`pipeline.data.ingest`, for every source alike. Each adapter returns:

* ``event_time`` already parsed to UTC (null when the source value cannot be parsed) and
  ``_raw_event_time``, the source text, so that a quarantined row shows what was wrong;
* the other canonical columns as the source has them (strings or numbers), cast later;
* optionally ``_excluded``: a reason for rows that parse but are not shop events of the canonical
  kinds. They go to quarantine with that reason, so nothing disappears.

Layouts:
    canonical: event_time, user_id, session_id, item_id, event_type, price, quantity.
    rees46: "eCommerce behavior data from multi category store" (event_time, event_type, product_id,
        category_id, category_code, brand, price, user_id, user_session).
    retailrocket: events.csv (timestamp in ms, visitorid, event, itemid, transactionid).
    uci_online_retail: UCI Online Retail and Online Retail II (Invoice or InvoiceNo, StockCode,
        Description, Quantity, InvoiceDate, Price or UnitPrice, Customer ID or CustomerID, Country).
    fraud_orders: the public e-commerce fraud layout (user_id, signup_time, purchase_time,
        purchase_value, device_id, source, browser, sex, age, ip_address, class): a sign-up, a
        purchase and, for class 1, a chargeback per row.
    yoochoose: RecSys Challenge 2015 clicks (SessionId, ItemId, Time in unix seconds).
    diginetica: CIKM Cup 2016 train-item-views.csv (session_id;user_id;item_id;timeframe;eventdate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from pipeline.core.errors import BadInput

# A session without activity for this long is closed (sources that have no session key).
SESSION_GAP_SECONDS = 30 * 60

# ISO 8601 variants; "%.f" also accepts a time without a fraction.
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
)


def _text(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String).str.strip_chars()


def parse_timestamp(expr: pl.Expr, formats: tuple[str, ...] = _ISO_FORMATS, tz: str = "UTC") -> pl.Expr:
    """Parse text timestamps to UTC, trying each format in turn; null where none fits.

    Formats with an offset (``%z``) or a literal ``Z`` are exact instants; naive ones are read as
    wall-clock time in ``tz``. Explicit formats, not inference: inference is 20 times slower and
    silently picks the format of the first row.
    """
    text = expr.cast(pl.String).str.strip_chars()
    candidates = []
    for fmt in formats:
        if "%z" in fmt or fmt.endswith("Z"):
            parsed = text.str.strptime(pl.Datetime("us", "UTC"), fmt, strict=False, exact=True)
        else:
            parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True)
            parsed = parsed.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
        candidates.append(parsed.dt.convert_time_zone("UTC"))
    return pl.coalesce(candidates)


def _epoch(expr: pl.Expr, unit: str) -> pl.Expr:
    """Numeric epoch text (seconds or milliseconds, fractions allowed) to a UTC timestamp."""
    scale = {"s": 1_000_000, "ms": 1_000}[unit]
    number = expr.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    return (number * scale).round(0).cast(pl.Int64, strict=False).cast(pl.Datetime("us", "UTC"))


def _sessionize(frame: pl.LazyFrame, user: str = "user_id") -> pl.LazyFrame:
    """Derive session ids for sources without one: a new session after a 30-minute gap."""
    ordered = frame.sort(user, "event_time", "_source_row", nulls_last=True)
    gap = pl.col("event_time").diff().over(user).dt.total_seconds()
    new_session = gap.is_null() | (gap > SESSION_GAP_SECONDS)
    return ordered.with_columns(
        pl.concat_str(pl.col(user), pl.lit("-"), new_session.cast(pl.Int32).cum_sum().over(user).cast(pl.String)).alias(
            "session_id"
        )
    )


@dataclass(frozen=True)
class Adapter:
    """How one source layout maps onto the canonical model."""

    name: str
    required_columns: tuple[str, ...]
    events: Callable[[pl.LazyFrame], pl.LazyFrame]
    catalog: Callable[[], list[pl.Expr]] | None = None
    separator: str = ","
    # Alternative column names across releases of the same source: canonical name -> aliases.
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The source column whose value explains an ``_excluded`` row (named in the quarantine file).
    exclusion_column: str | None = None


def _canonical_events(f: pl.LazyFrame) -> pl.LazyFrame:
    dtype = f.collect_schema()["event_time"]
    if isinstance(dtype, pl.Datetime):
        # Typed sources (Parquet) carry instants already; naive ones are taken as UTC.
        when = pl.col("event_time").cast(pl.Datetime("us", dtype.time_zone))
        event_time = when.dt.convert_time_zone("UTC") if dtype.time_zone else when.dt.replace_time_zone("UTC")
    else:
        event_time = parse_timestamp(pl.col("event_time"))
    return f.with_columns(
        event_time.alias("event_time"),
        _text("event_time").alias("_raw_event_time"),
        _text("event_type").str.to_lowercase().alias("event_type"),
    )


def _rees46_events(f: pl.LazyFrame) -> pl.LazyFrame:
    kind = _text("event_type").str.to_lowercase()
    return f.with_columns(
        parse_timestamp(_text("event_time").str.strip_suffix(" UTC"), tz="UTC").alias("event_time"),
        _text("event_time").alias("_raw_event_time"),
        _text("user_id").alias("user_id"),
        _text("user_session").alias("session_id"),
        _text("product_id").alias("item_id"),
        pl.when(kind == "cart").then(pl.lit("add_to_cart")).otherwise(kind).alias("event_type"),
        pl.col("price"),
        pl.lit(1).alias("quantity"),
    )


def _rees46_catalog() -> list[pl.Expr]:
    category = pl.coalesce(_text("category_code").replace("", None), _text("category_id"))
    return [
        _text("product_id").alias("item_id"),
        category.alias("category"),
        _text("brand").replace("", None).alias("brand"),
        pl.col("price").cast(pl.Float64, strict=False).alias("price"),
    ]


def _retailrocket_events(f: pl.LazyFrame) -> pl.LazyFrame:
    kind = _text("event").str.to_lowercase()
    mapped = (
        pl.when(kind == "addtocart")
        .then(pl.lit("add_to_cart"))
        .when(kind == "transaction")
        .then(pl.lit("purchase"))
        .otherwise(kind)
    )
    framed = f.with_columns(
        _epoch(pl.col("timestamp"), "ms").alias("event_time"),
        _text("timestamp").alias("_raw_event_time"),
        _text("visitorid").alias("user_id"),
        _text("itemid").alias("item_id"),
        mapped.alias("event_type"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.lit(1).alias("quantity"),
    )
    return _sessionize(framed)


def _uci_events(f: pl.LazyFrame) -> pl.LazyFrame:
    invoice = _text("Invoice")
    customer = _text("Customer ID").str.replace(r"\.0+$", "")
    cancelled = invoice.str.starts_with("C")
    return f.with_columns(
        # UCI times are the shop's local time in the UK.
        parse_timestamp(
            pl.col("InvoiceDate"),
            formats=(
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%d %H:%M",
                "%m/%d/%Y %H:%M",
                "%d/%m/%Y %H:%M",
            ),
            tz="Europe/London",
        ).alias("event_time"),
        _text("InvoiceDate").alias("_raw_event_time"),
        customer.alias("user_id"),
        invoice.alias("session_id"),
        _text("StockCode").alias("item_id"),
        # A cancelled invoice (``C...``, negative quantities) returns what was bought: a ``return``
        # of as many units, which the demand family subtracts; other families read purchases only.
        pl.when(cancelled).then(pl.lit("return")).otherwise(pl.lit("purchase")).alias("event_type"),
        pl.col("Price").alias("price"),
        pl.when(cancelled)
        .then(_text("Quantity").str.strip_chars().str.strip_prefix("-"))
        .otherwise(_text("Quantity"))
        .alias("quantity"),
        pl.lit(None, dtype=pl.String).alias("_excluded"),
    )


def _uci_catalog() -> list[pl.Expr]:
    # UCI has no category; the last word of the description names the product type
    # ("WHITE HANGING HEART T-LIGHT HOLDER" -> "holder"), a usable stand-in.
    description = _text("Description")
    return [
        _text("StockCode").alias("item_id"),
        description.str.to_lowercase().str.extract(r"([a-z]+)\s*$", 1).alias("category"),
        pl.lit(None, dtype=pl.String).alias("brand"),
        pl.col("Price").cast(pl.Float64, strict=False).alias("price"),
    ]


# The public fraud layout's times: as published, and as a spreadsheet re-saves them (US dates).
FRAUD_ORDERS_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%m/%d/%Y %H:%M")


def _fraud_orders_events(f: pl.LazyFrame) -> pl.LazyFrame:
    """The public e-commerce fraud layout: one row per order of a new account. Each row becomes
    the account's ``signup`` (at ``signup_time``), the order's ``purchase`` (``purchase_value``; the
    layout names no item, so every order buys the item ``order``) and, where ``class`` is 1, its
    ``chargeback``. The layout says which orders were fraud, not when that was learnt: the
    chargeback is dated at the purchase, so every label of the file counts as known at once, and
    later orders of the same device count it at once too (``*_chargebacks``), sooner than a real
    chargeback would arrive."""
    formats = FRAUD_ORDERS_TIME_FORMATS
    number = _text("ip_address").cast(pl.Float64, strict=False).floor().cast(pl.Int64, strict=False)
    quad = pl.concat_str([(number // 256**k % 256).cast(pl.String) for k in (3, 2, 1, 0)], separator=".")
    label = _text("class")
    common = f.with_columns(
        _text("user_id").alias("user_id"),
        pl.concat_str(pl.lit("o"), pl.col("_source_row").cast(pl.String)).alias("session_id"),
        _text("device_id").alias("device_id"),
        pl.when(number.is_not_null()).then(quad).otherwise(_text("ip_address")).alias("ip"),
        pl.lit(None, dtype=pl.String).alias("country"),
        pl.lit(None, dtype=pl.String).alias("payment_id"),
        pl.lit("1").alias("quantity"),
    )

    def at(column: str) -> list[pl.Expr]:
        return [parse_timestamp(pl.col(column), formats).alias("event_time"), _text(column).alias("_raw_event_time")]

    signup = common.with_columns(
        *at("signup_time"),
        pl.concat_str(pl.lit("signup-"), _text("user_id")).alias("session_id"),  # the account's, not the order's
        pl.lit(None, dtype=pl.String).alias("item_id"),
        pl.lit("signup").alias("event_type"),
        pl.lit(None, dtype=pl.String).alias("price"),
        pl.lit(None, dtype=pl.String).alias("_excluded"),
    )
    purchase = common.with_columns(
        *at("purchase_time"),
        pl.lit("order").alias("item_id"),
        pl.lit("purchase").alias("event_type"),
        _text("purchase_value").alias("price"),
        pl.when(~label.is_in(["0", "1"]) | label.is_null())
        .then(pl.lit("class must be 0 (genuine) or 1 (fraud)"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("_excluded"),
    )
    chargeback = purchase.filter(label == "1").with_columns(
        pl.lit(None, dtype=pl.String).alias("item_id"),
        pl.lit("chargeback").alias("event_type"),
        pl.lit(None, dtype=pl.String).alias("_excluded"),
    )
    columns = [
        "event_time",
        "_raw_event_time",
        "user_id",
        "session_id",
        "item_id",
        "event_type",
        "price",
        "quantity",
        "device_id",
        "ip",
        "country",
        "payment_id",
        "_excluded",
        "_source_row",
        "_source_file",
        "class",
    ]
    return pl.concat([frame.select(columns) for frame in (signup, purchase, chargeback)], how="vertical_relaxed")


def _fraud_orders_catalog() -> list[pl.Expr]:
    return [
        pl.lit("order").alias("item_id"),
        pl.lit("order").alias("category"),
        pl.lit(None, dtype=pl.String).alias("brand"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
    ]


def _yoochoose_events(f: pl.LazyFrame) -> pl.LazyFrame:
    # Yoochoose has no user column: each session is its own anonymous visitor.
    session = _text("SessionId")
    return f.with_columns(
        _epoch(pl.col("Time"), "s").alias("event_time"),
        _text("Time").alias("_raw_event_time"),
        pl.concat_str(pl.lit("anon-"), session).alias("user_id"),
        session.alias("session_id"),
        _text("ItemId").alias("item_id"),
        pl.lit("view").alias("event_type"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.lit(1).alias("quantity"),
    )


def _diginetica_events(f: pl.LazyFrame) -> pl.LazyFrame:
    # eventdate is the day; timeframe is milliseconds since the session's first event.
    session = _text("session_id")
    user = _text("user_id")
    day = _text("eventdate").str.strptime(pl.Datetime("us"), "%Y-%m-%d", strict=False, exact=True)
    offset = _text("timeframe").cast(pl.Int64, strict=False)
    return f.with_columns(
        (day + pl.duration(milliseconds=offset)).dt.replace_time_zone("UTC").alias("event_time"),
        pl.concat_str(_text("eventdate"), pl.lit(" +"), _text("timeframe"), pl.lit("ms")).alias("_raw_event_time"),
        pl.when(user.is_in(["NA", ""]) | user.is_null())
        .then(pl.concat_str(pl.lit("anon-"), session))
        .otherwise(user)
        .alias("user_id"),
        session.alias("session_id"),
        _text("item_id").alias("item_id"),
        pl.lit("view").alias("event_type"),
        pl.lit(None, dtype=pl.Float64).alias("price"),
        pl.lit(1).alias("quantity"),
    )


def _ids_only_catalog(item_column: str) -> Callable[[], list[pl.Expr]]:
    def build() -> list[pl.Expr]:
        return [
            _text(item_column).alias("item_id"),
            pl.lit(None, dtype=pl.String).alias("category"),
            pl.lit(None, dtype=pl.String).alias("brand"),
            pl.lit(None, dtype=pl.Float64).alias("price"),
        ]

    return build


ADAPTERS: dict[str, Adapter] = {
    "canonical": Adapter(
        "canonical",
        ("event_time", "user_id", "session_id", "item_id", "event_type", "price", "quantity"),
        _canonical_events,
    ),
    "rees46": Adapter(
        "rees46",
        (
            "event_time",
            "event_type",
            "product_id",
            "category_id",
            "category_code",
            "brand",
            "price",
            "user_id",
            "user_session",
        ),
        _rees46_events,
        _rees46_catalog,
    ),
    "retailrocket": Adapter(
        "retailrocket",
        ("timestamp", "visitorid", "event", "itemid", "transactionid"),
        _retailrocket_events,
        _ids_only_catalog("itemid"),
    ),
    "uci_online_retail": Adapter(
        "uci_online_retail",
        ("Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"),
        _uci_events,
        _uci_catalog,
        aliases={"Invoice": ("InvoiceNo",), "Price": ("UnitPrice",), "Customer ID": ("CustomerID",)},
        exclusion_column="Invoice",
    ),
    "fraud_orders": Adapter(
        "fraud_orders",
        (
            "user_id",
            "signup_time",
            "purchase_time",
            "purchase_value",
            "device_id",
            "source",
            "browser",
            "sex",
            "age",
            "ip_address",
            "class",
        ),
        _fraud_orders_events,
        _fraud_orders_catalog,
        exclusion_column="class",
    ),
    "yoochoose": Adapter(
        "yoochoose",
        ("SessionId", "ItemId", "Time"),
        _yoochoose_events,
        _ids_only_catalog("ItemId"),
        separator="\t",
    ),
    "diginetica": Adapter(
        "diginetica",
        ("session_id", "user_id", "item_id", "timeframe", "eventdate"),
        _diginetica_events,
        _ids_only_catalog("item_id"),
        separator=";",
    ),
}


def get_adapter(name: str) -> Adapter:
    """Look up an adapter by name.

    Raises:
        ValueError: no adapter has that name; the message lists the known ones.
    """
    try:
        return ADAPTERS[name]
    except KeyError:
        raise BadInput(f"unknown adapter {name!r}; known adapters: {', '.join(ADAPTERS)}") from None
