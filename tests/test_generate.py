"""The synthetic shop: deterministic, and with the structure models are meant to learn."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import datetime, timedelta, timezone

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


def test_the_files_do_not_depend_on_the_cpus_vector_instructions(tmp_path):
    """The same seed gives the same files on any x86 host: numpy picks sort and math kernels by the
    CPU (AVX-512, AVX2 or the baseline), and an unstable sort orders equal prices differently on
    each, which changed the items of card-testing orders and so every dataset version id between
    hosts. Here the generator runs with numpy's every dispatched extension this CPU has turned off
    (``NPY_DISABLE_CPU_FEATURES``), and with all of them."""
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    found = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    if not found:
        pytest.skip("this CPU has nothing beyond numpy's baseline to turn off")
    run = (
        "import sys; from pathlib import Path; from pipeline.core.params import GenerateParams;"
        "from pipeline.data.generate import generate_shop_data;"
        "generate_shop_data(GenerateParams(seed=7, start_date='2026-11-02', days=4, events_per_day=3000,"
        " initial_users=800, initial_items=1200, fraud_rate=0.2), Path(sys.argv[1]))"
    )
    digests = []
    for name, disabled in (("all", ""), ("baseline", " ".join(found))):
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disabled}
        done = subprocess.run(
            [sys.executable, "-c", run, str(tmp_path / name)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(_digest(sorted((tmp_path / name).rglob("*.csv"))))
    assert digests[0] == digests[1], f"numpy's {found} and its baseline generate different files"


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


RISKY = dataclasses.replace(SMALL, days=30, events_per_day=4000, fraud_rate=0.03, format="parquet")


@pytest.fixture(scope="module")
def risky(tmp_path_factory):
    out = tmp_path_factory.mktemp("risky")
    days = generate_shop_data(RISKY, out)
    events = pl.concat([pl.read_parquet(d.events_path) for d in days])
    truth = pl.read_csv(out / "truth" / "fraud.csv", try_parse_dates=True)
    return days, events, truth


def test_fraud_orders_come_at_the_rate_from_every_scenario(risky):
    _, events, truth = risky
    orders = events.filter(pl.col("event_type") == "purchase")["session_id"].n_unique()
    share = truth.height / orders
    assert 0.015 < share < 0.05, share  # 3% of genuine orders is about 2.9% of all of them
    assert set(truth["scenario"]) == {"card_testing", "account_takeover", "new_account", "reseller"}
    # Every fraudulent order is a real order in the events, with its purchases.
    bought = set(events.filter(pl.col("event_type") == "purchase")["session_id"])
    assert set(truth["session_id"]) <= bought


def test_chargebacks_arrive_late_and_only_for_fraud(risky):
    days, events, truth = risky
    charged = events.filter(pl.col("event_type") == "chargeback")
    assert charged["item_id"].null_count() == charged.height
    assert set(charged["session_id"]) <= set(truth["session_id"])  # no genuine order is charged back
    joined = charged.join(truth, on="session_id")
    delay = (joined["event_time"] - joined["order_time"]).dt.total_seconds() / 86_400
    assert delay.min() >= 3 and delay.max() <= 60
    assert (joined["event_time"] == joined["chargeback_time"]).all()
    # Those due after the last generated day are not in any file (not yet known at export).
    end = days[-1].events_path.stem.removeprefix("events-")
    due = truth.filter(pl.col("chargeback_time").dt.date() <= pl.lit(end).str.to_date())
    assert charged.height == due.height < truth.height


def test_fraud_scenarios_behave_as_described(risky):
    _, events, truth = risky
    purchases = events.filter(pl.col("event_type") == "purchase")
    genuine = purchases.filter(~pl.col("session_id").is_in(truth["session_id"].implode()))
    # Genuine buyers pay with their own cards (one, some a second), never another account's.
    cards = genuine.group_by("user_id").agg(pl.col("payment_id").n_unique())["payment_id"]
    assert cards.max() == 2 and 0.02 < (cards == 2).mean() < 0.2
    assert genuine.group_by("payment_id").agg(pl.col("user_id").n_unique())["user_id"].max() == 1
    # Card testing: one device, a burst of cheap orders, another card each time; the disguised
    # bursts are minutes apart, past the ten-minute window.
    tests = purchases.join(truth.filter(pl.col("scenario") == "card_testing"), on="session_id")
    burst = tests.group_by("device_id").agg(
        pl.col("payment_id").n_unique().alias("cards"), pl.col("event_time").sort().diff().dt.total_seconds().max()
    )
    assert burst["cards"].min() >= 4
    assert (burst["event_time"] <= 90).any() and (burst["event_time"] > 180).any()
    assert tests["price"].median() < genuine["price"].median()
    # Account takeover: an existing user, from a device never seen for that user before; some from
    # the user's own country.
    takeover = purchases.join(truth.filter(pl.col("scenario") == "account_takeover"), on="session_id")
    home = {}
    for user, session, device, country, when in takeover.select(
        "user_id", "session_id", "device_id", "country", "event_time"
    ).iter_rows():
        before = events.filter((pl.col("user_id") == user) & (pl.col("session_id") != session))
        before = before.filter(pl.col("event_time") < when)
        assert device not in set(before["device_id"].drop_nulls())
        home[session] = country in set(before["country"].drop_nulls())
    assert 0 < sum(home.values()) < len(home)
    assert takeover["price"].median() > genuine["price"].median()
    # New accounts buy within minutes of signing up, the disguised (aged) ones days later.
    signups = events.filter(pl.col("event_type") == "signup").select("user_id", pl.col("event_time").alias("signed"))
    fresh = purchases.join(truth.filter(pl.col("scenario") == "new_account"), on="session_id").join(
        signups, on="user_id"
    )
    waited = (fresh["event_time"] - fresh["signed"]).dt.total_minutes()
    assert ((waited <= 20) | (waited >= 24 * 60)).all() and (waited <= 20).any() and (waited >= 24 * 60).any()
    # A reseller ring: three or more accounts on one card, one device (disguised: one each).
    ring = purchases.join(truth.filter(pl.col("scenario") == "reseller"), on="session_id")
    per_card = ring.group_by("payment_id").agg(pl.col("user_id").n_unique(), pl.col("device_id").n_unique())
    assert per_card["user_id"].min() >= 3
    assert (per_card["device_id"] == 1).any() and (per_card["device_id"] == per_card["user_id"]).any()


def test_every_event_of_a_shop_with_fraud_lies_in_its_days_file(risky):
    days, _, _ = risky
    for d in days:
        times = pl.read_parquet(d.events_path)["event_time"]
        assert times.dt.date().cast(pl.String).unique().to_list() == [d.day]


def test_genuine_customers_also_share_devices_travel_and_change_devices(risky):
    """What fraud does, customers do too now and then: no single sign gives fraud away."""
    _, events, truth = risky
    genuine = events.filter(
        ~pl.col("session_id").is_in(truth["session_id"].implode()) & (pl.col("event_type") == "view")
    )
    shared = genuine.group_by("device_id").agg(pl.col("user_id").n_unique())["user_id"]
    assert (shared == 2).any()  # a household
    sessions = genuine.group_by("session_id").agg(pl.col("user_id").first(), pl.col("country").first())
    countries = sessions.group_by("user_id").agg(pl.col("country").n_unique())["country"]
    assert 0 < (countries > 1).mean() < 0.5  # travellers
    assert genuine["ip"].str.starts_with("100.").any()  # on roaming addresses
    assert genuine["device_id"].str.starts_with("dn").any()  # a new phone
    # Another address of their network now and then (a phone on its carrier's, a re-leased one).
    addresses = sessions.join(genuine.group_by("session_id").agg(pl.col("ip").first()), on="session_id").filter(
        pl.col("ip").str.starts_with("10.")
    )
    per_user = addresses.group_by("user_id").agg(
        pl.col("ip").n_unique(), pl.col("ip").str.extract(r"^(10\.\d+)\.").n_unique().alias("networks")
    )
    assert 0.1 < (per_user["ip"] > 1).mean() < 0.9
    assert per_user["networks"].max() == 1  # always the same network (its /16)


def test_fraud_leaves_the_genuine_events_as_they_were(tmp_path):
    base = dataclasses.replace(SMALL, days=3, fraud_rate=0.0, format="parquet")
    clean = generate_shop_data(base, tmp_path / "clean")
    risky = generate_shop_data(dataclasses.replace(base, fraud_rate=0.05), tmp_path / "risky")
    a = pl.concat([pl.read_parquet(d.events_path) for d in clean])
    b = pl.concat([pl.read_parquet(d.events_path) for d in risky])
    # Fraud: its orders (sessions f...), their chargebacks, the sign-ups of the accounts it opened.
    genuine = (
        ~pl.col("session_id").str.starts_with("f")
        & (pl.col("event_type") != "chargeback")
        & pl.col("user_id").is_in(a["user_id"].unique().implode())
    )
    cols = ["event_time", "user_id", "session_id", "item_id", "event_type", "price", "device_id", "payment_id"]
    assert b.filter(genuine).sort(cols).select(cols).equals(a.sort(cols).select(cols))
    assert b.height > a.height
    # New users sign up minutes before their first session.
    first = (
        a.filter(pl.col("event_type") != "signup").group_by("user_id").agg(pl.col("event_time").min().alias("first"))
    )
    signed = a.filter(pl.col("event_type") == "signup").join(first, on="user_id")
    assert signed.height > 0 and ((signed["first"] - signed["event_time"]).dt.total_seconds() >= 0).all()


def test_first_party_fraud_disputes_genuine_orders_of_a_few_customers(tmp_path):
    """``first_party_rate``: customers dispute some of their own orders. Nothing else changes (the
    same orders, sessions and devices as without it); each chargeback is of a genuine order, by the
    user who placed it, for its amount, at about the rate, from a small share of the buyers."""
    base = dataclasses.replace(SMALL, days=10, fraud_rate=0.0, chargeback_days=(1.0, 2.0), format="parquet")
    clean = generate_shop_data(base, tmp_path / "clean")
    disputed = generate_shop_data(dataclasses.replace(base, first_party_rate=0.05), tmp_path / "disputed")
    a = pl.concat([pl.read_parquet(d.events_path) for d in clean])
    b = pl.concat([pl.read_parquet(d.events_path) for d in disputed])
    assert a.filter(pl.col("event_type") == "chargeback").height == 0
    cols = ["event_time", "user_id", "session_id", "item_id", "event_type", "price", "device_id", "payment_id"]
    placed = b.filter(pl.col("event_type") != "chargeback")
    assert placed.sort(cols).select(cols).equals(a.sort(cols).select(cols))

    truth = pl.read_csv(tmp_path / "disputed" / "truth" / "fraud.csv", try_parse_dates=True)
    assert set(truth["scenario"]) == {"first_party"} and truth["disguised"].all()
    orders = (
        a.filter(pl.col("event_type") == "purchase")
        .group_by("session_id")
        .agg(pl.col("user_id").first().alias("buyer"), (pl.col("price") * pl.col("quantity")).sum().alias("paid"))
    )
    cases = truth.join(orders, on="session_id", how="left")
    assert cases["buyer"].null_count() == 0 and (cases["buyer"] == cases["user_id"]).all()
    assert np.allclose(cases["amount"], cases["paid"], atol=0.01)
    charged = b.filter(pl.col("event_type") == "chargeback")
    # Those that arrive after the last generated day are not in the files yet, as in a real export.
    end = datetime.fromisoformat(base.start_date).replace(tzinfo=timezone.utc) + timedelta(days=base.days)
    arrived = truth.filter(pl.col("chargeback_time") < end)
    assert 0 < arrived.height < truth.height
    assert set(charged["session_id"]) == set(arrived["session_id"])
    assert charged.join(truth, on="session_id").select((pl.col("price") - pl.col("amount")).abs().max()).item() < 0.01
    assert 0.03 < truth.height / orders.height < 0.07  # about the rate


def test_first_party_disputes_come_from_the_disputing_customers_and_their_dearer_orders():
    from pipeline.data import generate_risk

    risk = generate_risk.build_risk_world(2000, seed=5)
    assert 0.05 < risk.disputer.mean() < 0.15
    rng = np.random.default_rng(0)
    users = rng.integers(0, 2000, size=20_000)
    price = np.where(rng.random(users.size) < 0.5, 10.0, 100.0)  # cheap and dear orders, half each
    events = pl.DataFrame(
        {
            "event_time": [
                datetime(2026, 11, 2, tzinfo=timezone.utc) + timedelta(seconds=int(i)) for i in range(users.size)
            ],
            "user_id": [f"u{u}" for u in users],
            "session_id": [f"s{i}" for i in range(users.size)],
            "event_type": "purchase",
            "price": price,
            "quantity": 1,
        }
    )
    generate_risk.first_party_day(risk, events, rate=0.02, day_index=0, seed=5)
    disputed = pl.DataFrame(risk.truth).join(events.select("session_id", "price"), on="session_id")
    assert 300 < disputed.height < 500  # about 2% of 20,000
    ids = disputed["user_id"].str.strip_prefix("u").cast(pl.Int64).to_numpy()
    assert risk.disputer[ids].all()  # only the disputing customers
    assert (disputed["price"] == 100.0).mean() > 0.8  # dearer orders ten times as likely, each


def test_a_days_fraud_events_lie_in_that_day_browsing_included():
    """Ingestion reads a day's file for that day alone: a fraud event of today's file dated before
    midnight (a disguised takeover's browsing, drawn up to 25 minutes before an order placed just
    after midnight) would be left outside every interval."""
    from pipeline.data import generate_risk

    risk = generate_risk.build_risk_world(3000, seed=3)
    day_start = datetime(2026, 11, 2, tzinfo=timezone.utc)
    items = np.arange(800)
    prices = np.random.default_rng(0).uniform(1, 500, items.size)
    rows = generate_risk.fraud_day(risk, 0.6, 12_000, 5, day_start, np.arange(3000), items, prices, seed=3)
    times = generate_risk.rows_frame(rows)["event_time"]
    truth = pl.DataFrame(risk.truth)
    # The case this guards: disguised orders placed in the day's first 25 minutes, which browse.
    early = truth.filter(pl.col("disguised") & (pl.col("order_time") < day_start + timedelta(minutes=25)))
    assert early.height >= 3
    # (Rows past midnight, a ring's later sign-ups, are carried to tomorrow's file by the caller.)
    assert times.min() >= day_start, times.min()
