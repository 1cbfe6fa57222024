"""The fraud family's data: orders, labels as known at a time, features from before each order."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from pipeline.core.errors import BadInput
from pipeline.core.params import GenerateParams
from pipeline.data.generate import generate_shop_data
from pipeline.families.fraud.orders import DENSE, labels_as_of, order_features, orders_of

FAST = pytest.mark.fast  # the fast layer (`make test-fast`): every test here but the benchmark's

SHOP = GenerateParams(
    seed=4,
    start_date="2026-09-01",
    days=40,
    events_per_day=3000,
    initial_users=1500,
    initial_items=800,
    fraud_rate=0.03,
    format="parquet",
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("fraud")
    days = generate_shop_data(SHOP, out)
    events = pl.concat([pl.read_parquet(d.events_path) for d in days]).sort("event_time")
    truth = pl.read_csv(out / "truth" / "fraud.csv", try_parse_dates=True)
    return events, truth


@FAST
def test_no_feature_of_an_order_reads_an_event_at_or_after_its_time(shop):
    """Features of every order, computed at once, equal those computed from the events strictly
    before that order alone (a sample of orders, frauds of every scenario among them)."""
    events, truth = shop
    orders = orders_of(events)
    everything = order_features(orders, events)
    rng = np.random.default_rng(0)
    fraud = truth.group_by("scenario").agg(pl.col("session_id").first())["session_id"].to_list()
    sample = fraud + orders["session_id"].gather(rng.choice(orders.height, 40, replace=False)).to_list()
    for session in sample:
        order = orders.filter(pl.col("session_id") == session)
        t = order["order_time"][0]
        # Only what existed before the order, plus the order's own purchases (what it is).
        before = events.filter((pl.col("event_time") < t) | (pl.col("session_id") == session))
        alone = order_features(orders_of(before), before).filter(pl.col("session_id") == session)
        got = everything.filter(pl.col("session_id") == session).select(DENSE).row(0, named=True)
        want = alone.select(DENSE).row(0, named=True)
        for name in DENSE:
            assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), (session, name, got[name], want[name])


@FAST
def test_the_features_separate_the_scenarios_from_genuine_orders(shop):
    events, truth = shop
    features = order_features(orders_of(events), events).join(
        truth.select("session_id", "scenario"), on="session_id", how="left"
    )
    genuine = features.filter(pl.col("scenario").is_null())
    for scenario, feature in (
        ("card_testing", "device_cards_1d"),
        ("account_takeover", "new_device_for_user"),
        ("new_account", "account_age_known"),
        ("reseller", "device_accounts"),
    ):
        rows = features.filter(pl.col("scenario") == scenario)
        assert rows[feature].mean() > genuine[feature].mean() + 0.5, (scenario, feature)


@FAST
def test_a_label_not_yet_matured_at_the_cutoff_is_not_used(shop):
    events, truth = shop
    orders = orders_of(events)
    cutoff = orders["order_time"].max() - timedelta(days=5)
    labelled = labels_as_of(orders, events, cutoff, maturity_days=30)
    assert labelled["order_time"].max() < cutoff
    # A chargeback that arrives after the cutoff is not known at it.
    late = truth.filter(pl.col("chargeback_time") >= cutoff, pl.col("order_time") < cutoff)
    assert late.height > 0
    seen = labelled.join(late.select("session_id"), on="session_id")
    assert (seen["label"].is_null() | (seen["label"] == 0)).all()
    # Genuine only after the maturity window: younger orders without a chargeback are unknown.
    young = labelled.filter(pl.col("order_time") > cutoff - timedelta(days=30))
    assert young.filter(pl.col("label") == 0).height == 0
    assert young.filter(pl.col("label").is_null()).height > 0
    # Every known label was known by the cutoff; every fraud label is a real chargeback.
    known = labelled.filter(pl.col("label").is_not_null())
    assert (known["label_time"] <= cutoff).all()
    frauds = set(known.filter(pl.col("label") == 1)["session_id"])
    assert frauds <= set(truth["session_id"])
    # Old enough orders of a fraud whose chargeback came in time are labelled fraud.
    arrived = truth.filter(pl.col("chargeback_time") < cutoff)
    assert set(arrived["session_id"]) == frauds


@FAST
def test_the_fraud_orders_layout_is_read_with_its_labels(state, tmp_path):
    from conftest import write_csv
    from pipeline.data.dataset import load_events
    from pipeline.data.ingest import Interval, ingest_events

    rows = ["user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,ip_address,class"]
    for i in range(20):
        fraud = i % 5 == 0
        gap = "00:00:01" if fraud else "05:00:00"
        rows.append(
            f"{i},2015-04-18 00:00:00,2015-04-18 {gap},{10 + i},{'D0' if fraud else f'D{i}'},SEO,Chrome,M,30,"
            f"{1000 + i}.0,{int(fraud)}"
        )
    path = write_csv(tmp_path / "Fraud_Data.csv", "\n".join(rows) + "\n")
    ingest_events(Interval.for_day("2015-04-18"), str(path), state, adapter_name="fraud_orders")
    staged = state.staging / "events"
    events = load_events(staged.parent)
    orders = orders_of(events)
    labelled = labels_as_of(orders, events, orders["order_time"].max() + timedelta(days=1), maturity_days=0)
    assert labelled.height == 20 and labelled["label"].sum() == 4
    features = order_features(orders, events).sort("user_id")
    assert features.filter(pl.col("user_id") == "5")["account_age_days"][0] == pytest.approx(1 / 86_400)
    # The four frauds share device D0: each order sees the three other accounts signed up on it.
    assert features.filter(pl.col("device_id") == "D0")["device_accounts"].to_list() == [3.0, 3.0, 3.0, 3.0]
    assert features.filter(pl.col("device_id") == "D7")["device_accounts"].to_list() == [0.0]


@FAST
def test_bands_are_the_cheapest_within_the_review_budget():
    from itertools import combinations_with_replacement

    from pipeline.families.fraud.decisions import Bands, CostPolicy, choose_bands, decision_figures, order_costs

    rng = np.random.default_rng(1)
    n, days = 4000, 10
    labels = (rng.random(n) < 0.03).astype(float)
    scores = np.clip(rng.normal(0.2 + 0.5 * labels, 0.15), 0, 1)
    amounts = rng.lognormal(4, 1, n)
    policy = CostPolicy(review_budget_per_day=8, grid=25)
    bands, figures = choose_bands(scores, labels, amounts, days, policy)
    assert figures["reviews_per_day"] <= 8 and bands.review_at <= bands.block_at
    # Brute force over the same candidate thresholds: nothing within the budget is cheaper.
    cuts = [*np.unique(np.quantile(scores, np.linspace(0.5, 1.0, 25))), np.inf]
    best = min(
        order_costs(Bands(review_at=r, block_at=b).decide(scores), labels, amounts, policy).sum()
        for r, b in combinations_with_replacement(cuts, 2)
        if ((scores >= r) & (scores < b)).sum() <= 8 * days
    )
    assert figures["cost_per_1000"] == pytest.approx(best / n * 1000)
    # Reviewing nothing and blocking nothing costs every fraud: the bands beat it.
    nothing = decision_figures(scores, labels, amounts, Bands(review_at=np.inf, block_at=np.inf), days, policy)
    assert figures["cost_per_1000"] < nothing["cost_per_1000"] and nothing["caught_share"] == 0


@FAST
def test_recall_at_budget_counts_each_days_top_orders():
    from pipeline.families.fraud.decisions import recall_at_budget

    days = ["d1"] * 4 + ["d2"] * 4
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.95, 0.4])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    # Top two per day: d1 -> 0.9 (fraud), 0.8; d2 -> 0.95 (fraud), 0.4: two of the four frauds.
    assert recall_at_budget(scores, labels, np.array(days), 2) == 0.5
    assert recall_at_budget(scores, labels, np.array(days), 4) == 1.0


@FAST
def test_each_rule_fires_on_its_scenario(shop):
    from pipeline.families.fraud.scoring import RULES, RulesScorer

    events, truth = shop
    features = order_features(orders_of(events), events)
    rules = RulesScorer.fit(features)
    hits = pl.concat([features.select("session_id"), rules.hits(features)], how="horizontal").join(
        truth.select("session_id", "scenario"), on="session_id", how="left"
    )
    names = [name for name, _, _ in RULES]
    share = hits.group_by("scenario").agg(pl.col(n).mean() for n in names)
    row = {r["scenario"]: r for r in share.iter_rows(named=True)}
    assert row["card_testing"]["many cards on one device in a day"] > 0.5
    assert row["reseller"]["card shared by other accounts"] > 0.5
    assert row["account_takeover"]["known account, new device and country"] > 0.5
    assert row["new_account"]["new account, large order"] > 0.5
    # Genuine orders rarely trip any of them.
    genuine = hits.filter(pl.col("scenario").is_null()).select(names).to_numpy().any(axis=1).mean()
    assert genuine < 0.1


@FAST
def test_the_split_leaves_a_maturity_gap_and_uses_only_labels_known_then(shop):
    from pipeline.families.fraud.split import fraud_split, labelled_periods

    events, truth = shop
    start = events["event_time"].min().replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=SHOP.days)
    split = fraud_split(start, end, valid_days=5, test_days=5, maturity_days=7)
    assert split.valid_start - split.train_end == split.test_start - split.valid_end == timedelta(days=7)
    assert split.end - split.test_end == timedelta(days=7)
    periods = labelled_periods(orders_of(events), events, split, 7)
    charged = truth.select("session_id", "chargeback_time")
    for name, as_of in (("train", split.valid_start), ("valid", split.test_start), ("test", split.end)):
        rows = periods[name].join(charged, on="session_id", how="left")
        # Every label was known at the period's moment: no later chargeback, no immature genuine.
        assert (rows["label_time"] <= as_of).all(), name
        fraud_later = rows.filter(pl.col("chargeback_time") >= as_of)
        assert (fraud_later["label"] == 0).all(), name  # known then as genuine, as a shop would
        assert rows["label"].sum() > 0, name
    with pytest.raises(BadInput, match="needs at least 56"):
        fraud_split(start, end, valid_days=10, test_days=10, maturity_days=10, min_train_days=6)


def test_the_benchmark_reads_a_file_in_the_public_layout(tmp_path, monkeypatch):
    """``bench_fraud --data FILE --json OUT`` on rows in the public layout (the data set itself is
    not in ../shared): signups, purchases and labels through the adapter, the three scorers, the
    figures under the keys the issue names."""
    import json

    from benchmarks import bench_fraud

    rng = np.random.default_rng(3)
    lines = ["user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,ip_address,class"]
    start = np.datetime64("2015-01-01T00:00:00")
    for i in range(9000):
        fraud = rng.random() < 0.05
        when = start + np.timedelta64(int(rng.uniform(40 * 86400, 80 * 86400)), "s")
        gap = rng.uniform(1, 30) if fraud else rng.uniform(3600, 40 * 86400)
        device = f"R{rng.integers(0, 40)}" if fraud else f"D{i}"
        value = rng.uniform(60, 150) if fraud else rng.lognormal(3.5, 0.6)
        signup = when - np.timedelta64(int(gap), "s")
        lines.append(
            f"{i},{str(signup).replace('T', ' ')},{str(when).replace('T', ' ')},{value:.0f},{device},SEO,Chrome,M,30,"
            f"{rng.uniform(1e6, 4e9):.1f},{int(fraud)}"
        )
    data = tmp_path / "Fraud_Data.csv"
    data.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SHOPML_HOME", str(tmp_path / "home"))
    out = tmp_path / "figures.json"
    assert (
        bench_fraud.main(
            ["--data", str(data), "--json", str(out), "--skip-generated", "--valid-days", "7", "--test-days", "7"]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert set(figures) == {"rules", "lightgbm", "dcn_v2"}
    for name, m in figures.items():
        assert set(m) == {"auc_pr", "recall_at_budget", "cost_per_1000"}, name
        assert 0 <= m["auc_pr"] <= 1 and 0 <= m["recall_at_budget"] <= 1 and m["cost_per_1000"] >= 0
    # Frauds here buy seconds after signing up, on shared devices: the learned scorers find them.
    assert figures["lightgbm"]["auc_pr"] > 0.8 and figures["dcn_v2"]["auc_pr"] > 0.8


@FAST
def test_the_feature_set_writes_each_period_with_labels_known_at_its_moment(shop, tmp_path):
    from pipeline.core.params import TrainFraudParams
    from pipeline.data.dataset import Dataset
    from pipeline.families.fraud.features import PERIODS, write_features

    events, _ = shop
    folder = tmp_path / "events" / "event_date=2026-09-01"
    folder.mkdir(parents=True)
    events.write_parquet(folder / "part-0.parquet")  # one partition: what Dataset.events() reads
    params = TrainFraudParams(maturity_days=7, valid_days=5, test_days=5)
    out = tmp_path / "set"
    out.mkdir()
    counts, split = write_features(out, Dataset("v", tmp_path), params)
    moments = {"train": split.valid_start, "valid": split.test_start, "test": split.end}
    for name in PERIODS:
        rows = pl.read_parquet(out / f"{name}.parquet")
        assert rows.height == counts[name] > 0 and int(rows["label"].sum()) == counts[f"{name}_fraud"] > 0
        assert set(DENSE) <= set(rows.columns) and rows["label"].null_count() == 0
        assert (rows["label_time"] <= moments[name]).all(), name
    assert split.to_dict()["test_end"] == (split.end - timedelta(days=7)).isoformat()
