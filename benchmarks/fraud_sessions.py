"""How an order's own session looks before its purchase, and whether its network address is new to
its user, per fraud scenario of the truth and for genuine orders, on the generated shop.

Written as a measurement for the next features (``ecbb3cc``): the fraud features
(``pipeline.families.fraud.orders.DENSE``) then read the history of an order's keys, never the
browsing of its own session; every generated fraud went straight to what it bought, and every
customer kept one address. Since ``b140c87`` the generator's customers change address and its
disguised frauds browse, and the features read both (``session_seconds``, ``new_ip_for_user``);
this shows how far each sign still tells fraud from genuine orders. The learned scorers' misses
on the generated shop are account takeovers (``make bench-fraud``'s table per scenario): a known
customer's account on a new device, which genuine customers who change phones look like in every
other feature. This prints, per scenario, the share of orders whose session holds no view beyond
the items bought, and the share whose session began under ``SHORT_S`` seconds before the
purchase; then how many genuine known customers on a new device look like that. Then the address:
the share of each scenario's orders placed from an address the user had not been seen on (in any
event) before the session (``address_unseen``, computed as ``new_device_for_user`` is for the
device), and how many of the genuine known customers on a new device also are, and of those how
many from their own country (a disguised takeover's look). The feature ``new_ip_for_user`` reads
the account's earlier orders only, hence another name here.

    python -m benchmarks.fraud_sessions [--shop-seed N ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl

SHORT_S = 130.0  # the generator's fraud views come 20-120 s before the purchase


def session_shape(events: pl.DataFrame, features: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """Per order of ``features`` (``order_features``' rows): ``views`` and ``extra_views`` (views
    before the purchase, and those beyond the items bought), ``browse_s`` (seconds from the
    session's first event to the purchase) and ``scenario`` (the truth's, else ``genuine``)."""
    before = (
        events.join(features.select("session_id", "order_time"), on="session_id")
        .filter(pl.col("event_time") < pl.col("order_time"))
        .group_by("session_id")
        .agg((pl.col("event_type") == "view").sum().cast(pl.Float64).alias("views"))
    )
    return (
        features.select(
            "session_id",
            "items",
            "new_device_for_user",
            "user_prior_orders",
            ((pl.col("order_time") - pl.col("session_start")).dt.total_seconds()).cast(pl.Float64).alias("browse_s"),
        )
        .join(before, on="session_id", how="left")
        .join(truth.select("session_id", "scenario"), on="session_id", how="left")
        .with_columns(
            pl.col("views").fill_null(0.0),
            pl.col("scenario").fill_null("genuine"),
        )
        .with_columns((pl.col("views") - pl.col("items")).alias("extra_views"))
    )


def shape_table(shape: pl.DataFrame) -> pl.DataFrame:
    """Per scenario: orders, the share with no view beyond the items bought, the share begun under
    ``SHORT_S`` before the purchase, and the median seconds from the session's start."""
    return (
        shape.group_by("scenario")
        .agg(
            pl.len().alias("orders"),
            (pl.col("extra_views") <= 0).mean().alias("no_extra_views"),
            (pl.col("browse_s") < SHORT_S).mean().alias("under_short_s"),
            pl.col("browse_s").median().alias("median_browse_s"),
        )
        .sort("scenario")
    )


def with_new_address(events: pl.DataFrame, shape: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """``shape`` with ``address_unseen`` (1.0 unless the order's user was seen on its address
    before its session began; an order without an address, 0.0) and ``new_country_for_user``."""
    from pipeline.families.fraud.orders import _first_seen  # the pairs new_device_for_user reads

    known = (
        features.select("session_id", "user_id", "ip", "session_start", "new_country_for_user")
        .join(_first_seen(events, "user_id", "ip"), on=["user_id", "ip"], how="left")
        .select(
            "session_id",
            "new_country_for_user",
            pl.when(pl.col("ip").is_null())
            .then(0.0)
            .otherwise((~(pl.col("first") < pl.col("session_start")).fill_null(False)).cast(pl.Float64))
            .alias("address_unseen"),
        )
    )
    return shape.join(known, on="session_id", how="left")


def address_table(shape: pl.DataFrame) -> pl.DataFrame:
    """Per scenario: the share of orders from an address new to the user (``with_new_address``)."""
    return (
        shape.group_by("scenario")
        .agg(pl.len().alias("orders"), pl.col("address_unseen").mean().alias("new_address"))
        .sort("scenario")
    )


def _known_on_new_device(shape: pl.DataFrame) -> pl.DataFrame:
    """Genuine orders of known customers (an earlier order) from a device new to them."""
    return shape.filter(
        (pl.col("scenario") == "genuine") & (pl.col("new_device_for_user") == 1) & (pl.col("user_prior_orders") > 0)
    )


def address_lookalikes(shape: pl.DataFrame) -> tuple[int, int, int]:
    """Genuine known customers on a new device: how many, how many of them on an address new to
    them, and how many of those from their own country."""
    look = _known_on_new_device(shape)
    new = look.filter(pl.col("address_unseen") == 1)
    return look.height, new.height, new.filter(pl.col("new_country_for_user") == 0).height


def lookalikes(shape: pl.DataFrame) -> tuple[int, int, int]:
    """Genuine orders of known customers (an earlier order) from a new device: how many, how many
    of them with no extra view, and how many of them also begun under ``SHORT_S``."""
    look = _known_on_new_device(shape)
    quick = look.filter(pl.col("extra_views") <= 0)
    return look.height, quick.height, quick.filter(pl.col("browse_s") < SHORT_S).height


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_fraud import generated_shop
    from pipeline.families.fraud.orders import order_features, orders_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop-seed", type=int, nargs="+", default=[2, 5, 7], help="the generated shops' seeds")
    args = parser.parse_args(argv)
    pl.Config.set_tbl_rows(20)
    for seed in args.shop_seed:
        with tempfile.TemporaryDirectory(prefix="shopml-fraud-sessions-") as home:
            events, truth = generated_shop(Path(home), seed)
        features = order_features(orders_of(events), events)
        shape = with_new_address(events, session_shape(events, features, truth), features)
        print(f"generated shop, seed {seed} (bench_fraud's recipe): {shape.height:,} orders")
        print(shape_table(shape))
        n, quick, both = lookalikes(shape)
        print(
            f"genuine known customers on a new device: {n:,}; with no view beyond the items bought {quick:,}, "
            f"and of those begun under {SHORT_S:.0f} s before the purchase {both:,}"
        )
        print(address_table(shape))
        n, new, own = address_lookalikes(shape)
        print(
            f"genuine known customers on a new device: {n:,}; on an address new to them {new:,}, "
            f"and of those from their own country {own:,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
