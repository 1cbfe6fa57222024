"""The synthetic shop: deterministic, and with the structure models are meant to learn."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import polars as pl
import pytest

from pipeline.core.params import GenerateParams
from pipeline.data.generate import generate_shop_data

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

SMALL = GenerateParams(
    seed=7,
    start_date="2026-11-02",
    days=7,
    events_per_day=6000,
    initial_users=1500,
    initial_items=1200,
    new_users_per_day=0.03,
    new_items_per_day=0.02,
)


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    out = tmp_path_factory.mktemp("landing")
    days = generate_shop_data(SMALL, out)
    events = pl.concat([pl.read_csv(d.events_path, try_parse_dates=True) for d in days])
    return days, events


def _digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    params = dataclasses.replace(SMALL, days=2)
    a = generate_shop_data(params, tmp_path / "a")
    b = generate_shop_data(params, tmp_path / "b")
    c = generate_shop_data(dataclasses.replace(params, seed=8), tmp_path / "c")
    files = lambda days: [p for d in days for p in (d.events_path, d.catalog_path)]  # noqa: E731
    assert _digest(files(a)) == _digest(files(b))
    assert _digest(files(a)) != _digest(files(c))


def test_every_event_lies_in_its_days_file(week):
    days, _ = week
    for d in days:
        times = pl.read_csv(d.events_path, try_parse_dates=True)["event_time"]
        assert times.dt.date().cast(pl.String).unique().to_list() == [d.day]


def test_funnel_order_view_then_cart_then_purchase(week):
    _, events = week
    first = (
        events.group_by("session_id", "item_id", "event_type")
        .agg(pl.col("event_time").min().alias("t"))
        .pivot(on="event_type", index=["session_id", "item_id"], values="t")
    )
    carts = first.filter(pl.col("add_to_cart").is_not_null())
    assert carts.height > 100
    assert carts.filter(pl.col("view").is_null() | (pl.col("view") > pl.col("add_to_cart"))).height == 0
    bought = first.filter(pl.col("purchase").is_not_null())
    assert bought.height > 50
    assert bought.filter(pl.col("add_to_cart").is_null() | (pl.col("add_to_cart") > pl.col("purchase"))).height == 0
    removed = first.filter(pl.col("remove_from_cart").is_not_null())
    assert removed.height > 0
    assert removed.filter(pl.col("add_to_cart") > pl.col("remove_from_cart")).height == 0
    counts = events["event_type"].value_counts().to_dict(as_series=False)
    by_type = dict(zip(counts["event_type"], counts["count"], strict=True))
    assert by_type["view"] > by_type["add_to_cart"] > by_type["purchase"] > 0


def test_item_popularity_follows_a_power_law(week):
    _, events = week
    views = events.filter(pl.col("event_type") == "view")["item_id"].value_counts(sort=True)["count"].to_numpy()
    share_top_5pct = views[: max(1, len(views) // 20)].sum() / views.sum()
    assert share_top_5pct > 0.25  # a uniform catalog would give 0.05
    ranks = np.arange(1, len(views) + 1)
    head = slice(0, len(views) // 2)
    slope = np.polyfit(np.log(ranks[head]), np.log(views[head]), 1)[0]
    assert -2.0 < slope < -0.4


def test_users_have_personal_category_preferences(week, tmp_path):
    days, events = week
    catalog = pl.read_csv(days[-1].catalog_path).select("item_id", "category")
    views = events.filter(pl.col("event_type") == "view").join(catalog, on="item_id")
    active = views.group_by("user_id").len().filter(pl.col("len") >= 15)["user_id"]
    per_user = (
        views.filter(pl.col("user_id").is_in(active.implode()))
        .group_by("user_id", "category")
        .len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("user_id")).alias("share"))
        .group_by("user_id")
        .agg(pl.col("share").max())
    )
    global_top = views["category"].value_counts()["count"].max() / views.height
    # The favourite category of a user takes far more of their views than the shop's top category does.
    assert per_user["share"].mean() > 2 * global_top


def test_daily_and_weekly_seasonality(week):
    days, events = week
    by_day = {d.day: d.events for d in days}
    weekend = np.mean([by_day["2026-11-07"], by_day["2026-11-08"]])  # Saturday, Sunday
    midweek = np.mean([by_day["2026-11-03"], by_day["2026-11-04"]])
    assert weekend > 1.1 * midweek
    hours = events["event_time"].dt.hour().value_counts().to_dict(as_series=False)
    per_hour = dict(zip(hours["event_time"], hours["count"], strict=True))
    assert per_hour[20] > 4 * per_hour[3]


def test_new_users_and_items_arrive_over_time(week):
    days, events = week
    first_seen = events.group_by("user_id").agg(pl.col("event_time").min().dt.date().alias("d"))
    assert first_seen["d"].n_unique() == len(days)
    catalogs = [pl.read_csv(d.catalog_path) for d in days]
    assert catalogs[-1].height > catalogs[0].height
    new_items = set(catalogs[-1]["item_id"]) - set(catalogs[0]["item_id"])
    assert events.filter(pl.col("item_id").is_in(list(new_items))).height > 0


def test_customers_buy_again(week):
    _, events = week
    purchases = events.filter(pl.col("event_type") == "purchase")
    repeat = purchases.group_by("user_id", "item_id").agg(pl.col("session_id").n_unique().alias("n"))
    assert repeat.filter(pl.col("n") > 1).height > 10


def test_volume_scales_with_events_per_day(tmp_path):
    base = dataclasses.replace(SMALL, days=1, start_date="2026-11-03")
    small = generate_shop_data(dataclasses.replace(base, events_per_day=5000), tmp_path / "s")[0].events
    large = generate_shop_data(dataclasses.replace(base, events_per_day=50000, initial_users=15000), tmp_path / "l")[
        0
    ].events
    assert 8 < large / small < 12
