"""The fraud family's data: orders, labels as known at a time, features from before each order."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
import torch

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
    fraud_rate=0.05,  # a fraud or two a day in so small a shop, so that a five-day period holds some
    format="parquet",
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("fraud")
    days = generate_shop_data(SHOP, out)
    events = pl.concat([pl.read_parquet(d.events_path) for d in days]).sort("event_time")
    truth = pl.read_csv(out / "truth" / "fraud.csv", try_parse_dates=True)
    return events, truth


@pytest.fixture(scope="module")
def first_party_shop(tmp_path_factory):
    """``SHOP`` where customers also dispute some of their own orders (first-party fraud): accounts,
    devices and cards that order again after a chargeback has arrived, as the default shop's
    fraudsters never do."""
    import dataclasses

    out = tmp_path_factory.mktemp("first-party")
    days = generate_shop_data(dataclasses.replace(SHOP, first_party_rate=0.03), out)
    events = pl.concat([pl.read_parquet(d.events_path) for d in days]).sort("event_time")
    truth = pl.read_csv(out / "truth" / "fraud.csv", try_parse_dates=True)
    return events, truth


CHARGEBACK_FEATURES = ("user_chargebacks", "device_chargebacks", "payment_chargebacks")
SESSION_FIELDS = ("user_id", "device_id", "country", "payment_id")  # a sign-up's or a session's report


def _charged_again(events: pl.DataFrame, everything: pl.DataFrame, n: int) -> list[str]:
    """Orders that count an earlier chargeback, and orders placed before a chargeback of their own
    account arrived (which must not count it yet): ``n`` of each."""
    from pipeline.families.fraud.orders import charged_back

    counted = everything.filter(pl.any_horizontal(pl.col(c) > 0 for c in CHARGEBACK_FEATURES))
    charged = charged_back(orders_of(events), events)
    waiting = (
        everything.join(charged.select("user_id", "chargeback_time"), on="user_id")
        .filter(pl.col("order_time") < pl.col("chargeback_time"))
        .unique("session_id", maintain_order=True)
    )
    assert counted.height >= n and waiting.height >= n
    return counted["session_id"].head(n).to_list() + waiting["session_id"].tail(n).to_list()


def _assert_features_from_before(events: pl.DataFrame, everything: pl.DataFrame, sample: list[str]) -> None:
    orders = orders_of(events)
    for session in sample:
        order = orders.filter(pl.col("session_id") == session)
        t = order["order_time"][0]
        # Only what existed before the order, plus the order's own purchases (what it is), not its
        # own chargeback.
        own = (pl.col("session_id") == session) & (pl.col("event_type") != "chargeback")
        before = events.filter((pl.col("event_time") < t) | own)
        alone = order_features(orders_of(before), before).filter(pl.col("session_id") == session)
        got = everything.filter(pl.col("session_id") == session).select(DENSE).row(0, named=True)
        want = alone.select(DENSE).row(0, named=True)
        for name in DENSE:
            assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-9), (session, name, got[name], want[name])


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
    # Network addresses shared by accounts: orders that count others before them, and the first
    # order of each such address, which must not count the accounts that came after it.
    shared = orders.group_by("ip").agg(pl.col("user_id").n_unique().alias("accounts")).filter(pl.col("accounts") > 1)
    first = (
        orders.join(shared, on="ip", how="semi").group_by("ip", maintain_order=True).agg(pl.col("session_id").first())
    )
    counting = everything.filter(pl.col("ip_accounts_1d") > 0)
    assert first.height >= 5 and counting.height >= 5
    sample += first["session_id"].head(5).to_list() + counting["session_id"].head(5).to_list()
    # An account's orders from an address it had ordered from, and its first from a new one.
    for new in (0.0, 1.0):
        known = everything.filter((pl.col("new_ip_for_user") == new) & (pl.col("user_prior_orders") > 0))
        assert known.height >= 5, new
        sample += known["session_id"].head(5).to_list()
    _assert_features_from_before(events, everything, sample)


@FAST
def test_an_order_counts_only_the_chargebacks_that_had_arrived_before_it(first_party_shop):
    """The chargeback counts of an account, device and card, as of the order: equal to those from
    the events before the order alone, for orders that count some and for orders placed before
    their own account's chargeback arrived; first-party frauds count one far more often than
    genuine orders, and the rules flag them for it."""
    from pipeline.families.fraud.scoring import RulesScorer

    events, truth = first_party_shop
    everything = order_features(orders_of(events), events)
    _assert_features_from_before(events, everything, _charged_again(events, everything, 8))
    labelled = everything.join(truth.select("session_id", "scenario"), on="session_id", how="left")
    rule = "earlier chargeback on the account, device or card"
    labelled = pl.concat([labelled, RulesScorer.fit(everything).hits(everything).select(rule)], how="horizontal")
    share = {
        r["scenario"]: r[rule]
        for r in labelled.group_by(pl.col("scenario").fill_null("genuine")).agg(pl.col(rule).mean()).to_dicts()
    }
    assert share["first_party"] > 0.1 > 0.02 > share["genuine"], share


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

    from pipeline.families.fraud.decisions import (
        Bands,
        CostPolicy,
        candidate_cuts,
        choose_bands,
        decision_figures,
        order_costs,
    )

    rng = np.random.default_rng(1)
    n, days = 4000, 10
    labels = (rng.random(n) < 0.03).astype(float)
    scores = np.clip(rng.normal(0.2 + 0.5 * labels, 0.15), 0, 1)
    amounts = rng.lognormal(4, 1, n)
    policy = CostPolicy(review_budget_per_day=8, grid=25)
    bands, figures = choose_bands(scores, labels, amounts, days, policy)
    assert figures["reviews_per_day"] <= 8 and bands.review_at <= bands.block_at
    # Brute force over the same candidate thresholds: nothing within the budget is cheaper.
    cuts = candidate_cuts(scores, 25)
    # The grid reaches into the riskiest 1% (frauds are 3% here), up to the top score.
    assert (cuts > np.quantile(scores, 0.99)).sum() >= 5 and cuts[-2] == scores.max()
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
        truth.select("session_id", "scenario", "disguised"), on="session_id", how="left"
    )
    names = [name for name, _, _ in RULES]
    share = hits.group_by("scenario", "disguised").agg(pl.col(n).mean() for n in names)
    row = {(r["scenario"], r["disguised"]): r for r in share.iter_rows(named=True)}
    # A burst's first three orders have not yet shown three cards; the rest have, disguised or not.
    for disguised in (False, True):
        assert row["card_testing", disguised]["many cards on one device in a day"] > 0.4
        assert row["reseller", disguised]["card shared by other accounts"] > 0.5
    # A disguised ring orders from one address, a device each: its later accounts trip the address
    # rule (the plain ring shares one device, whose rule it trips).
    assert row["reseller", True]["many accounts on one network address in a day"] > 0.3
    # The plain takeovers and new accounts trip their rule; the disguised ones slip past it.
    for scenario, rule in (
        ("account_takeover", "known account, new device and country"),
        ("new_account", "new account, large order"),
    ):
        assert row[scenario, False][rule] > 0.5 > row[scenario, True][rule], scenario
    # Genuine orders rarely trip any of them, and the address rule almost never (households are two).
    genuine = hits.filter(pl.col("scenario").is_null())
    assert genuine.select(names).to_numpy().any(axis=1).mean() < 0.1
    assert genuine["many accounts on one network address in a day"].mean() < 0.002


@FAST
def test_the_rules_floor_retires_on_its_training_orders_a_rule_that_costs_more_than_it_saves(shop):
    """With a cost policy, the rules floor keeps only the rules that lower its cost on the training
    orders: a rule made to flag one genuine order in four is dropped, the rules that alone flag
    card tests and new-account frauds stay, and the cost on those orders is lower than with every
    rule. Without a policy it runs every rule, as before."""
    from pipeline.families.fraud.decisions import CostPolicy, choose_bands
    from pipeline.families.fraud.scoring import RULE_NAMES, RulesScorer, select_rules

    events, truth = shop
    rows = order_features(orders_of(events), events).with_columns(
        label=pl.col("session_id").is_in(truth["session_id"].implode()).cast(pl.Float64)
    )
    genuine = (rows["label"] == 0).to_numpy()
    noisy = genuine & (np.random.default_rng(0).random(rows.height) < 0.25)
    rows = rows.with_columns(amount_vs_user_mean=pl.when(pl.Series(noisy)).then(9.0).otherwise(1.0))
    policy = CostPolicy(review_budget_per_day=5)  # of about 115 orders a day: the top 4%
    assert RulesScorer.fit(rows).rules == RULE_NAMES
    chosen = RulesScorer.fit(rows, policy)
    assert chosen.rules == select_rules(RulesScorer.fit(rows), rows, policy)
    assert "far above the user's usual amount" not in chosen.rules
    assert {"new account, large order", "many cards on one device in a day"} <= set(chosen.rules)
    assert chosen.rules == tuple(n for n in RULE_NAMES if n in chosen.rules)  # in the stated order
    days = (rows["order_time"].max() - rows["order_time"].min()).total_seconds() / 86_400
    labels, amounts = rows["label"].to_numpy(), rows["amount"].to_numpy()

    def cost(scorer):
        return choose_bands(scorer.score(rows), labels, amounts, days, policy)[1]["cost_per_1000"]

    assert cost(chosen) < cost(RulesScorer.fit(rows))
    # benchmarks.fraud_rules' table counts what each rule flags: the noisy rule, those genuine
    # orders alone; card testing, frauds of which some no other rule flags.
    from benchmarks.fraud_rules import rules_table

    table = {name: (hit, alone, genuine) for name, hit, alone, genuine in rules_table(rows, RulesScorer.fit(rows))}
    assert table["far above the user's usual amount"] == (0, 0, int(noisy.sum()))
    hit, alone, _ = table["many cards on one device in a day"]
    assert 0 < alone < hit


@FAST
def test_a_rules_file_saved_before_the_address_rule_runs_the_rules_it_was_banded_with(shop, tmp_path):
    """A rules scorer names its rules in its file; one saved before it did (a champion whose bands
    were chosen on eight rules) runs those eight, so its scores are those its bands were chosen
    on; a file naming a rule this version does not know is refused, naming it. A rules scorer's
    reasons are its hits, most points first."""
    from pipeline.families.fraud.decisions import Bands
    from pipeline.families.fraud.pyfunc import FraudPyfunc, scorer_file
    from pipeline.families.fraud.scoring import LEGACY_RULES, RULE_NAMES, RulesScorer

    events, _ = shop
    rows = order_features(orders_of(events), events)
    address = "many accounts on one network address in a day"
    assert address in RULE_NAMES and address not in LEGACY_RULES
    current = RulesScorer.fit(rows)
    ring = rows.filter(pl.col("ip_accounts_1d") >= 2)
    assert ring.height > 0 and current.rules == RULE_NAMES
    pyfunc = FraudPyfunc.from_parts("rules", current, Bands(4.0, 6.0))
    path = scorer_file(pyfunc, tmp_path / "rules.json")
    saved = json.loads(path.read_text())
    assert saved["rules"]["rules"] == list(RULE_NAMES)
    np.testing.assert_array_equal(FraudPyfunc.from_file(path).scores(rows), current.score(rows))
    del saved["rules"]["rules"]  # as files were written before
    path.write_text(json.dumps(saved))
    old = FraudPyfunc.from_file(path)
    assert old.scorer.rules == LEGACY_RULES
    # The ring's orders score two points less under the old rules, and so do the known accounts on
    # a new device and address (the rule after it); every other order the same.
    diff = current.score(rows) - old.scores(rows)
    later = current.hits(rows).select(RULE_NAMES[len(LEGACY_RULES) :]).to_numpy().astype(float)
    hit = (rows["ip_accounts_1d"] >= 2).to_numpy()
    assert later[:, 0].astype(bool).tolist() == hit.tolist() and 0 < later[:, 1].sum() < rows.height
    np.testing.assert_allclose(diff, later.sum(axis=1) * 2.0)
    saved["rules"]["rules"] = [*LEGACY_RULES, "many accounts on one card"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="many accounts on one card"):
        FraudPyfunc.from_file(path)
    # Reasons: most points first, whatever the rules' order. Four two-point rules come before the
    # chargeback's three points in ``RULES``: it must still be named first.
    busy = ring.head(1).with_columns(
        # no other rule: an old account, one card on the device, a known device, a usual amount
        account_age_days=pl.lit(300.0),
        device_cards_1d=pl.lit(1.0),
        new_device_for_user=pl.lit(0.0),
        amount_vs_user_mean=pl.lit(1.0),
        device_accounts=pl.lit(2.0),
        payment_accounts=pl.lit(1.0),
        user_orders_10m=pl.lit(3.0),
        user_chargebacks=pl.lit(1.0),
    )
    why = pyfunc.matrix_reasons(busy.select(DENSE).to_numpy())[0]
    assert why[0] == {"feature": "earlier chargeback on the account, device or card", "value": 1.0, "contribution": 3.0}
    assert [r["contribution"] for r in why] == [3.0, 2.0, 2.0]
    reasons = pyfunc.matrix_reasons(ring.select(DENSE).to_numpy())
    for why in reasons:
        points = [r["contribution"] for r in why]
        assert points == sorted(points, reverse=True), why
    assert any(r["feature"] == address for why in reasons for r in why)


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

    from benchmarks import bench_fraud

    # The benchmark allows its file's folder as an ingestion source (os.environ): recorded here, so
    # that monkeypatch undoes it after this test (delenv of an unset variable records nothing).
    monkeypatch.setenv("SHOPML_INGEST_SOURCES", "")

    def written(t: np.datetime64, i: int) -> str:
        """As published (ISO), or, every third row, as a spreadsheet re-saves it (US date, minutes),
        the form of the public copy the benchmark's page was run on."""
        if i % 3:
            return str(t).replace("T", " ")
        at = t.astype("datetime64[s]").item()
        return f"{at.month}/{at.day}/{at.year} {at.hour}:{at.minute:02d}"

    rng = np.random.default_rng(3)
    # With a byte-order mark, as that copy has.
    lines = ["\ufeffuser_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,ip_address,class"]
    start = np.datetime64("2015-01-01T00:00:00")
    for i in range(9000):
        fraud = rng.random() < 0.05
        when = start + np.timedelta64(int(rng.uniform(40 * 86400, 80 * 86400)), "s")
        gap = rng.uniform(1, 30) if fraud else rng.uniform(3600, 40 * 86400)
        device = f"R{rng.integers(0, 40)}" if fraud else f"D{i}"
        value = rng.uniform(60, 150) if fraud else rng.lognormal(3.5, 0.6)
        signup = when - np.timedelta64(int(gap), "s")
        lines.append(
            f"{i},{written(signup, i)},{written(when, i)},{value:.0f},{device},SEO,Chrome,M,30,"
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
    promoted = figures.pop("promoted")
    assert set(figures) == {"rules", "lightgbm", "dcn_v2"} and promoted in figures
    for name, m in figures.items():
        assert set(m) == {"auc_pr", "recall_at_budget", "cost_per_1000"}, name
        assert 0 <= m["auc_pr"] <= 1 and 0 <= m["recall_at_budget"] <= 1 and m["cost_per_1000"] >= 0
    # Frauds here buy seconds after signing up, on shared devices: the learned scorers find them.
    assert figures["lightgbm"]["auc_pr"] > 0.8 and figures["dcn_v2"]["auc_pr"] > 0.8


def test_the_benchmark_figures_the_generated_shop_against_its_truth_as_well(shop):
    """On the generated shop the benchmark gives every figure twice: against the labels (what the
    gate sees) and against the generator's truth, where the test frauds whose chargeback had not
    arrived count as fraud. Told a truth that is exactly the labels, both sets agree."""
    from datetime import datetime

    from benchmarks.bench_fraud import NETWORK, fraud_benchmark

    events, truth = shop
    fig = fraud_benchmark(events, 5, 5, 7, budget=20, samples=50, truth=truth.select("session_id", "scenario"))
    _, test_frauds = fig["rows"]["test"]
    late, true = fig["rows"]["test_late"]
    assert true - late == test_frauds > 0  # every labelled fraud is a true one, the rest are late
    # Each true test fraud is in one scenario's row.
    assert sum(row["frauds"] for row in fig["by_scenario"].values()) == true
    assert set(fig["by_scenario"]) <= {"card_testing", "account_takeover", "new_account", "reseller"}
    assert late > 0  # chargebacks of up to 60 days: some had not arrived 7 days after the period
    for name, m in fig["models"].items():
        assert 0 < m["auc_pr_truth"] <= 1 and m["cost_per_1000_truth"] >= 0, name
    assert {"auc_pr_truth_minus_lightgbm", "cost_per_1000_truth_minus_rules"} <= set(fig["models"][NETWORK])

    # The labels of the test period are the chargebacks arrived by the data's end: as the truth,
    # they give the labels' own figures.
    end = datetime.fromisoformat(fig["split"]["end"])
    known = truth.filter(pl.col("chargeback_time") < end).select("session_id")
    same = fraud_benchmark(events, 5, 5, 7, budget=20, samples=50, truth=known)
    assert same["rows"]["test_late"] == (0, test_frauds)
    for name, m in same["models"].items():
        assert m["auc_pr_truth"] == pytest.approx(m["auc_pr"]), name
        assert m["cost_per_1000_truth"] == pytest.approx(m["cost_per_1000"]), name


@FAST
def test_the_benchmark_says_per_scenario_how_many_frauds_the_bands_stop():
    """Per scenario of the truth: its frauds, how many of them the bands send to review or block,
    and the AUC-PR with its orders left out (ties ranked as one threshold, as everywhere)."""
    from benchmarks.bench_fraud import scenario_figures
    from pipeline.families.fraud.decisions import Bands

    true = np.array([1, 0, 1, 0, 1, 0], dtype=float)
    scenario = np.array(["a", None, "b", None, "b", None], dtype=object)
    scores = {"m": np.array([0.9, 0.9, 0.95, 0.5, 0.3, 0.1])}
    decided = {"m": Bands(review_at=0.3, block_at=0.95).decide(scores["m"])}
    figures = scenario_figures(true, scenario, scores, decided)
    # "a"'s fraud (0.9) is reviewed; "b"'s are blocked (0.95) and reviewed (0.3, at the threshold).
    assert figures["a"] == {"frauds": 1, "m": {"stopped": 1, "auc_pr_truth_without": pytest.approx(0.75)}}
    assert figures["b"] == {"frauds": 2, "m": {"stopped": 2, "auc_pr_truth_without": pytest.approx(0.5)}}
    # Without "a": precision 1 at recall 1/2, then 2/4 at 1. Without "b": "a" tied, precision 1/2.
    higher = {"m": Bands(review_at=0.31, block_at=0.95).decide(scores["m"])}
    assert scenario_figures(true, scenario, scores, higher)["b"]["m"]["stopped"] == 1


@FAST
def test_the_session_probe_counts_browsing_before_the_purchase_only():
    """benchmarks/fraud_sessions.py: views after the purchase do not count, a view beyond the items
    bought does, and seconds run from the session's first event to the purchase."""
    from benchmarks.fraud_sessions import lookalikes, session_shape, shape_table

    at = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)

    def event(session: str, seconds: float, kind: str = "view") -> dict:
        return {"session_id": session, "event_time": at + timedelta(seconds=seconds), "event_type": kind}

    events = pl.DataFrame(
        [
            event("quick", -60),  # one view of the one item bought, a minute before
            event("quick", 30),  # after the purchase: not browsing before it
            event("browsed", -600),
            event("browsed", -300),  # a second view: beyond the one item bought
            event("fraud", -90),
        ]
    )
    features = pl.DataFrame(
        {
            "session_id": ["quick", "browsed", "fraud"],
            "order_time": [at] * 3,
            "session_start": [at - timedelta(seconds=60), at - timedelta(seconds=600), at - timedelta(seconds=90)],
            "items": [1.0, 1.0, 1.0],
            "new_device_for_user": [1.0, 1.0, 0.0],
            "user_prior_orders": [2.0, 3.0, 0.0],
        }
    )
    truth = pl.DataFrame({"session_id": ["fraud"], "scenario": ["account_takeover"]})
    shape = session_shape(events, features, truth).sort("session_id")
    assert shape["scenario"].to_list() == ["genuine", "account_takeover", "genuine"]  # browsed, fraud, quick
    assert shape["views"].to_list() == [2.0, 1.0, 1.0] and shape["extra_views"].to_list() == [1.0, 0.0, 0.0]
    assert shape["browse_s"].to_list() == [600.0, 90.0, 60.0]
    assert lookalikes(shape) == (2, 1, 1)  # two known customers on a new device; one never browsed
    table = {r["scenario"]: r for r in shape_table(shape).iter_rows(named=True)}
    assert table["genuine"]["orders"] == 2 and table["genuine"]["no_extra_views"] == 0.5
    assert table["account_takeover"]["under_short_s"] == 1.0


@FAST
def test_the_address_probe_counts_an_address_new_when_first_seen_in_the_orders_own_session():
    """benchmarks/fraud_sessions.py: an address is new to a user unless seen with that user before
    the order's session began (a sighting within the session does not count); none is not new."""
    from benchmarks.fraud_sessions import address_lookalikes, address_table, with_new_address

    at = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    day = timedelta(days=1)
    events = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u2", "u3"],
            "ip": ["10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.1"],
            # u1 on its address the day before; u2 only within its session; u3 on u1's address, today
            "event_time": [at - day, at - timedelta(seconds=30), at, at],
        }
    )
    features = pl.DataFrame(
        {
            "session_id": ["s1", "s2", "s3", "s4"],
            "user_id": ["u1", "u2", "u3", "u4"],
            "ip": ["10.0.0.1", "10.0.0.2", "10.0.0.1", None],
            "session_start": [at - timedelta(seconds=60)] * 4,
            "new_country_for_user": [0.0, 0.0, 1.0, 0.0],
        }
    )
    shape = pl.DataFrame(
        {
            "session_id": ["s1", "s2", "s3", "s4"],
            "scenario": ["genuine", "genuine", "account_takeover", "genuine"],
            "new_device_for_user": [1.0, 1.0, 1.0, 1.0],
            "user_prior_orders": [1.0, 1.0, 0.0, 2.0],
        }
    )
    out = with_new_address(events, shape, features).sort("session_id")
    assert out["address_unseen"].to_list() == [0.0, 1.0, 1.0, 0.0]
    assert address_lookalikes(out) == (3, 1, 1)  # s2: a known customer, new device, new address, home country
    table = {r["scenario"]: r["new_address"] for r in address_table(out).iter_rows(named=True)}
    assert table == {"account_takeover": 1.0, "genuine": pytest.approx(1 / 3)}


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


@FAST
def test_the_lightgbm_floor_keeps_the_setting_best_on_validation_and_serves_with_it(shop, tmp_path):
    """The floor is tuned as a data scientist would tune it, on validation orders only: of the
    grid, the setting whose early-stopped booster ranks validation frauds best is the one kept, and
    its saved scorer scores as it did and remembers that setting."""
    from pipeline.families.fraud.decisions import Bands, average_precision
    from pipeline.families.fraud.features import labelled_features
    from pipeline.families.fraud.pyfunc import FraudPyfunc, scorer_file
    from pipeline.families.fraud.scoring import LightGBMScorer
    from pipeline.families.fraud.split import fraud_split

    events, _ = shop
    start = events["event_time"].min().replace(hour=0, minute=0, second=0, microsecond=0)
    periods, _ = labelled_features(events, fraud_split(start, start + timedelta(days=SHOP.days), 5, 5, 7), 7)
    train, valid = periods["train"], periods["valid"]
    grid = (
        {"num_leaves": 3, "min_data_in_leaf": 400, "weighting": "balanced"},
        {"num_leaves": 31, "min_data_in_leaf": 20, "weighting": "sqrt"},
        {"num_leaves": 7, "min_data_in_leaf": 50, "weighting": "sqrt"},
    )
    alone = [LightGBMScorer.fit(train, valid, grid=(g,)) for g in grid]
    valid_ap = [average_precision(valid["label"].to_numpy(), s.score(valid)) for s in alone]
    assert len(set(np.round(valid_ap, 6))) > 1  # the settings differ, so the choice matters
    chosen = LightGBMScorer.fit(train, valid, grid=grid)
    best = int(np.argmax(valid_ap))
    assert {k: chosen.settings[k] for k in grid[best]} == grid[best]
    assert chosen.settings["valid_auc_pr"] == pytest.approx(max(valid_ap))
    np.testing.assert_allclose(chosen.score(periods["test"]), alone[best].score(periods["test"]))
    # Saved as the family saves its floors, loaded as a Bento loads them: the same scores.
    pyfunc = FraudPyfunc.from_parts("lightgbm", chosen, Bands(review_at=0.5, block_at=0.9))
    path = scorer_file(pyfunc, tmp_path / "lightgbm.json")
    loaded = FraudPyfunc.from_file(path)
    assert loaded.scorer.settings == chosen.settings
    saved = json.loads(path.read_text())  # the setting once, with the figures a run logs
    assert "settings" not in saved and saved["figures"]["settings"] == chosen.settings
    np.testing.assert_allclose(loaded.scores(periods["test"]), pyfunc.scores(periods["test"]))


def _served_sample(events, sample, tmp_path):
    """``sample``'s features as ``/score`` computes them from a snapshot of ``events`` (one order at
    a time: a batch shares its orders' rows, which would hide a missing lookup), and the snapshot."""
    from pipeline.families.fraud.evaluation import order_body
    from pipeline.families.fraud.serving import Order, OrderScorer, order_frame
    from pipeline.serving.snapshot import FeatureSnapshot

    snapshot = FeatureSnapshot.load(tmp_path / "snap")
    scorer = OrderScorer(None, snapshot, "memory")
    served = pl.concat([scorer.feature_rows(order_frame([Order(**order_body(r))])) for r in sample.to_dicts()])
    assert served["session_id"].to_list() == sample["session_id"].to_list()
    for name in DENSE:
        np.testing.assert_allclose(served[name].to_numpy(), sample[name].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name)


def _snapshot(events, tmp_path):
    from pipeline.families.fraud.serving import snapshot_tables
    from pipeline.serving.snapshot import FeatureSnapshot, write_snapshot_of

    catalog = pl.DataFrame({"item_id": ["order"], "category": ["c"], "brand": ["b"], "price": [1.0]})
    write_snapshot_of(snapshot_tables, events, catalog, "test", tmp_path / "snap")
    return FeatureSnapshot.load(tmp_path / "snap")


@FAST
def test_a_scorer_saved_before_the_chargeback_counts_reads_the_features_it_was_trained_on(shop, tmp_path):
    """A scorer file names its features; one saved before it did (a champion trained before the
    chargeback counts were added) scores the columns it learnt from, out of today's feature rows,
    as it did; one naming a feature this version does not compute is refused, naming it."""
    import lightgbm as lgb

    from pipeline.families.fraud.decisions import Bands
    from pipeline.families.fraud.pyfunc import LEGACY_FEATURES, FraudPyfunc, scorer_file
    from pipeline.families.fraud.scoring import LightGBMScorer

    events, _ = shop
    rows = order_features(orders_of(events), events).join(
        shop[1].select("session_id", pl.lit(1.0).alias("label")), on="session_id", how="left"
    )
    old = list(DENSE[:LEGACY_FEATURES])
    assert not any("chargeback" in name for name in old)
    x, y = rows.select(old).to_numpy().astype(np.float32), rows["label"].fill_null(0.0).to_numpy()
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(x, y), 20)
    want = booster.predict(x)
    pyfunc = FraudPyfunc.from_parts("lightgbm", LightGBMScorer(booster.model_to_string()), Bands(0.5, 0.9))
    path = scorer_file(pyfunc, tmp_path / "old.json")
    saved = json.loads(path.read_text())
    assert saved["features"] == list(DENSE)
    del saved["features"]  # as files were written before
    path.write_text(json.dumps(saved))
    loaded = FraudPyfunc.from_file(path)
    assert loaded.features == tuple(old)
    matrix = rows.select(DENSE).to_numpy()
    np.testing.assert_allclose(loaded.matrix_scores(matrix), want, rtol=1e-6)
    reasons = loaded.matrix_reasons(matrix[:50])
    assert all(r["feature"] in old for why in reasons for r in why) and any(reasons)
    path.write_text(json.dumps({**saved, "features": [*old, "ip_chargebacks"]}))
    with pytest.raises(ValueError, match="ip_chargebacks"):
        FraudPyfunc.from_file(path)


@FAST
@pytest.mark.parametrize("sigmoid", [1.0, 2.5])
def test_lightgbm_scores_and_reasons_from_one_call_equal_those_of_two(sigmoid):
    """``score_matrix`` takes LightGBM's score from the sum of its TreeSHAP contributions (one
    booster call): the same scores as ``predict`` and the same reasons, for the objective's own
    sigmoid; a booster of another objective is scored by ``predict``."""
    import lightgbm as lgb

    from pipeline.families.fraud.decisions import Bands
    from pipeline.families.fraud.pyfunc import FraudPyfunc, binary_sigmoid
    from pipeline.families.fraud.scoring import LightGBMScorer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(DENSE)))
    y = (x[:, 0] + 0.5 * x[:, 3] - x[:, 7] + rng.normal(size=len(x)) > 1.5).astype(float)
    params = {"objective": "binary", "sigmoid": sigmoid, "num_leaves": 15, "verbose": -1, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(x.astype(np.float32), y), 40)
    assert binary_sigmoid(booster.model_to_string()) == sigmoid
    pyfunc = FraudPyfunc.from_parts("lightgbm", LightGBMScorer(booster.model_to_string()), Bands(0.3, 0.8))
    scores, reasons = pyfunc.score_matrix(x)
    np.testing.assert_allclose(scores, booster.predict(x.astype(np.float32)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scores, pyfunc.matrix_scores(x), rtol=1e-12, atol=1e-12)
    assert reasons == pyfunc.matrix_reasons(x) and any(reasons)

    regression = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x.astype(np.float32), y), 10)
    assert binary_sigmoid(regression.model_to_string()) is None
    other = FraudPyfunc.from_parts("lightgbm", LightGBMScorer(regression.model_to_string()), Bands(0.3, 0.8))
    np.testing.assert_allclose(other.score_matrix(x)[0], regression.predict(x.astype(np.float32)))


@FAST
def test_served_features_equal_the_training_features_as_of_each_order(shop, tmp_path):
    """``/score``'s features (the snapshot's rows of the order's keys, then ``order_features``)
    equal those computed over every event, for orders before the snapshot's cutoff sent as raw
    orders (a replay) and with every scenario among them; orders scored after the cutoff are
    remembered, so a burst from one new device is seen as a burst."""
    from datetime import datetime, timezone

    from pipeline.families.fraud.serving import Order, OrderScorer

    events, truth = shop
    snapshot = _snapshot(events, tmp_path)
    everything = order_features(orders_of(events), events)
    cutoff = snapshot.cutoff
    recent = everything.filter(pl.col("order_time") >= cutoff - timedelta(days=6))
    fraud = recent.join(truth.select("session_id"), on="session_id", how="semi")
    sample = pl.concat([fraud, recent.sample(60, seed=0)]).unique("session_id", maintain_order=True)
    # Every kind of feature takes part: a history shared with other accounts, sightings, bursts.
    for name in (
        "device_accounts",
        "payment_accounts",
        "ip_accounts_30d",
        "new_device_for_user",
        "user_orders_10m",
        "user_prior_orders",
    ):
        assert (sample[name] > 0).any(), name
    _served_sample(events, sample, tmp_path)

    # After the cutoff: three orders two minutes apart from one new device and card, scored in turn.
    class Banded:
        from pipeline.families.fraud.decisions import Bands

        bands = Bands(review_at=1.0, block_at=2.0)

        def score_matrix(self, x):
            return x[:, DENSE.index("device_orders_10m")], [[] for _ in range(x.shape[0])]

    scorer = OrderScorer(Banded(), snapshot, "memory")
    burst = []
    for k in range(3):
        at = datetime.fromtimestamp(cutoff.timestamp() + 3600 + 120 * k, timezone.utc)
        order = Order(user_id=f"tester-{k}", order_time=at, amount=2.0, device_id="dev-new", payment_id=f"card-{k}")
        burst.append(scorer.score_requests([[order]])[0][0])
    assert [b["score"] for b in burst] == [0.0, 1.0, 2.0]
    assert [b["band"] for b in burst] == ["approve", "review", "block"]


@FAST
def test_served_chargeback_counts_equal_the_training_ones_and_count_those_reported_since(first_party_shop, tmp_path):
    """Orders that count earlier chargebacks, and orders placed before their account's chargeback
    arrived, get the training code's counts from the snapshot; after the cutoff, a chargeback sent
    to ``/chargebacks`` counts for the next orders of its account, device and card, from its time
    on, once however often it is sent."""
    from datetime import datetime, timezone

    from pipeline.families.fraud.serving import Chargeback, Order, OrderScorer, order_rows

    events, _ = first_party_shop
    snapshot = _snapshot(events, tmp_path)
    everything = order_features(orders_of(events), events)
    sample = everything.filter(pl.col("session_id").is_in(_charged_again(events, everything, 8)))
    _served_sample(events, sample, tmp_path)

    scorer = OrderScorer(None, snapshot, "memory")
    at = datetime.fromtimestamp(snapshot.cutoff.timestamp() + 86_400, timezone.utc)
    user, device, card = "u-new", "d-new", "p-new"

    def counts(hours: float, **keys) -> list[float]:
        order = Order(order_time=at + timedelta(hours=hours), amount=10.0, **({"user_id": user} | keys))
        row = scorer.features(order_rows([order]))
        return [float(row[0, DENSE.index(c)]) for c in CHARGEBACK_FEATURES]

    assert counts(1, device_id=device, payment_id=card) == [0.0, 0.0, 0.0]
    reported = Chargeback(order_id="o-disputed", time=at, user_id=user, device_id=device, payment_id=card)
    assert scorer.record_chargebacks([reported]) == 1
    assert scorer.record_chargebacks([reported]) == 0  # a notice sent twice is one chargeback
    assert counts(1, device_id=device, payment_id=card) == [1.0, 1.0, 1.0]
    assert counts(-1, device_id=device, payment_id=card) == [0.0, 0.0, 0.0]  # before it arrived
    # Another account on the same card: the card's count, not the account's.
    assert counts(2, user_id="u-other", payment_id=card) == [0.0, 0.0, 1.0]


@FAST
def test_an_account_opened_after_the_snapshot_is_known_as_new_once_its_signup_is_reported(shop, tmp_path):
    """A day after the snapshot, sent as it happened (its sign-ups to ``/signups`` and its orders to
    ``/score``, in time order): every order's served features are the training code's, the
    accounts opened that day included (new-account and card-testing frauds). Without the sign-ups
    the service took those accounts for the shop's oldest customers, whose sign-up it never saw
    (the demo's replayed day: 30 of 193 orders)."""
    from datetime import datetime, timezone

    from pipeline.families.fraud.evaluation import order_body
    from pipeline.families.fraud.serving import Order, OrderScorer, Signup, order_frame

    events, truth = shop
    first = events["event_time"].min()
    cutoff = datetime(first.year, first.month, first.day, tzinfo=timezone.utc) + timedelta(days=30)
    end = cutoff + timedelta(days=1)
    snapshot = _snapshot(events.filter(pl.col("event_time") < cutoff), tmp_path)
    # What the service is told of the day: sign-ups and orders (its chargebacks are another test's).
    known = events.filter(
        (pl.col("event_time") < end) & ~((pl.col("event_type") == "chargeback") & (pl.col("event_time") >= cutoff))
    )
    offline = (
        order_features(orders_of(known), known).filter(pl.col("order_time") >= cutoff).sort("order_time", "session_id")
    )
    signups = known.filter((pl.col("event_type") == "signup") & (pl.col("event_time") >= cutoff))
    opened = offline.filter(pl.col("user_id").is_in(signups["user_id"].implode()))
    assert opened.height >= 5 and opened["session_id"].is_in(truth["session_id"].implode()).sum() >= 3

    def served(report_signups: bool) -> pl.DataFrame:
        scorer = OrderScorer(None, snapshot, "memory")
        happened = [(r["event_time"], 0, r) for r in signups.to_dicts()]
        happened += [(r["order_time"], 1, r) for r in offline.to_dicts()]
        rows = []
        for at, kind, r in sorted(happened, key=lambda h: (h[0], h[1])):
            if kind == 0 and report_signups:
                fields = {k: r[k] for k in ("user_id", "device_id", "country", "payment_id")}
                assert scorer.record_signups([Signup(time=at, **fields)]) == 1
            elif kind == 1:
                order = Order(**order_body(r))
                rows.append(scorer.feature_rows(order_frame([order])))
                scorer.remember([[order]], [[{"order_id": r["session_id"]}]])
        return pl.concat(rows)

    got = served(report_signups=True)
    assert got["session_id"].to_list() == offline["session_id"].to_list()
    for name in DENSE:
        np.testing.assert_allclose(got[name].to_numpy(), offline[name].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
    # One account reported twice in one request (a retried form, an earlier time): one sign-up.
    twice = OrderScorer(None, snapshot, "memory")
    opened_at = [Signup(user_id="u-twice", time=cutoff + timedelta(minutes=m)) for m in (5, 1)]
    assert twice.record_signups(opened_at) == 1 and twice.record_signups(opened_at[:1]) == 0
    blind = served(report_signups=False).filter(pl.col("session_id").is_in(opened["session_id"].implode()))
    assert blind["account_age_known"].sum() == 0 and opened["account_age_known"].min() == 1.0


@FAST
def test_ten_days_told_as_they_happened_give_every_order_the_training_features(first_party_shop, tmp_path):
    """Ten days after a snapshot, told to the service as they happened: sign-ups, sessions begun
    without an order (``/sessions``), orders, and each chargeback as a payment provider's notice,
    the order's id and the time, nothing else. The service takes the order's account, device and
    card as it saw the order (the snapshot's orders, or the ones scored since), so every order's
    served features are the training code's over all the events. Without the notices, orders after
    a chargeback of their device or card miss it; without the sessions, an account that browsed
    days before its first order looks like a first visit. A notice of an order never seen, without
    its account, is refused naming it, and none of its request is kept."""
    from datetime import datetime, timezone

    from pipeline.families.fraud.evaluation import order_body
    from pipeline.families.fraud.serving import (
        Chargeback,
        Order,
        OrderScorer,
        Session,
        Signup,
        UnknownOrder,
        order_frame,
    )

    events, _ = first_party_shop
    first = events["event_time"].min()
    cutoff = datetime(first.year, first.month, first.day, tzinfo=timezone.utc) + timedelta(days=28)
    end = cutoff + timedelta(days=10)
    snapshot = _snapshot(events.filter(pl.col("event_time") < cutoff), tmp_path)
    known = events.filter(pl.col("event_time") < end)
    offline = (
        order_features(orders_of(known), known).filter(pl.col("order_time") >= cutoff).sort("order_time", "session_id")
    )
    day = known.filter(pl.col("event_time") >= cutoff)
    signups = day.filter(pl.col("event_type") == "signup")
    notices = day.filter(pl.col("event_type") == "chargeback").group_by("session_id").agg(pl.col("event_time").min())
    placed_before = notices["session_id"].is_in(orders_of(events.filter(pl.col("event_time") < cutoff))["session_id"])
    # The notices name orders of both kinds: in the snapshot, and scored since.
    assert placed_before.sum() >= 5 and (~placed_before).sum() >= 5, (placed_before.sum(), notices.height)
    ordered = day.filter(pl.col("event_type") == "purchase")["session_id"].unique().implode()
    visits = (
        day.filter(~pl.col("event_type").is_in(["signup", "chargeback"]) & ~pl.col("session_id").is_in(ordered))
        .group_by("session_id")
        .agg(pl.col("event_time").min(), *(pl.col(k).drop_nulls().first() for k in SESSION_FIELDS))
    )

    def served(notify: bool = True, browse: bool = True) -> pl.DataFrame:
        scorer = OrderScorer(None, snapshot, "memory")
        happened = [(r["event_time"], 0, r) for r in signups.to_dicts()]
        happened += [(r["event_time"], 1, r) for r in notices.to_dicts()]
        happened += [(r["event_time"], 2, r) for r in visits.to_dicts()]
        happened += [(r["order_time"], 3, r) for r in offline.to_dicts()]
        rows = []
        for at, kind, r in sorted(happened, key=lambda h: (h[0], h[1])):
            if kind == 0:
                scorer.record_signups([Signup(time=at, **{k: r[k] for k in SESSION_FIELDS})])
            elif kind == 1 and notify:
                assert scorer.record_chargebacks([Chargeback(order_id=r["session_id"], time=at)]) == 1
            elif kind == 2 and browse:
                scorer.record_sessions([Session(time=at, **{k: r[k] for k in SESSION_FIELDS})])
            elif kind == 3:
                order = Order(**order_body(r))
                rows.append(scorer.feature_rows(order_frame([order])))
                scorer.remember([[order]], [[{"order_id": r["session_id"]}]])
        return pl.concat(rows)

    got = served()
    assert got["session_id"].to_list() == offline["session_id"].to_list()
    for name in DENSE:
        np.testing.assert_allclose(got[name].to_numpy(), offline[name].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
    # What each report is for: without the notices, orders after a chargeback of their device or
    # card miss it; without the sessions, a browser's first order looks like a first visit.
    blind = served(notify=False)
    for name in ("device_chargebacks", "payment_chargebacks"):
        assert (blind[name].to_numpy() < offline[name].to_numpy()).sum() >= 1, name
    unseen = served(browse=False)
    assert (unseen["user_seen_before"].to_numpy() < offline["user_seen_before"].to_numpy()).sum() >= 10
    assert (unseen["new_device_for_user"].to_numpy() > offline["new_device_for_user"].to_numpy()).sum() >= 10

    scorer = OrderScorer(None, snapshot, "memory")
    seen = Chargeback(order_id=notices.filter(placed_before)["session_id"][0], time=end)  # in the snapshot
    never = Chargeback(order_id="o-never-seen", time=end)
    with pytest.raises(UnknownOrder, match=r"chargebacks\[1\].order_id: order 'o-never-seen' is unknown"):
        scorer.record_chargebacks([seen, never])
    assert scorer.recent.arrays([], [], [f"u:{u}" for u in known["user_id"].unique()])[2]["session_id"].size == 0
    # Sent with its account, an order never seen counts for that account alone.
    assert scorer.record_chargebacks([never.model_copy(update={"user_id": "u-x"})]) == 1
    assert scorer.recent.arrays([], [], ["u:u-x", "d:None", "p:None"])[2]["session_id"].tolist() == ["o-never-seen"]
    # A session tells something once: again, nothing; earlier, its earlier time; on another device, that pair.
    visit = Session(user_id="u-v", time=end, device_id="d-v", country="DE")
    assert scorer.record_sessions([visit]) == 1 and scorer.record_sessions([visit, visit]) == 0
    earlier, elsewhere = visit.model_copy(update={"time": cutoff}), visit.model_copy(update={"device_id": "d-w"})
    assert scorer.record_sessions([earlier, visit, elsewhere]) == 2


@FAST
def test_a_bad_order_is_refused_naming_the_field():
    from pydantic import ValidationError

    from pipeline.families.fraud.serving import ScoreRequest

    good = {"user_id": "u1", "order_time": "2026-10-01T10:00:00Z", "amount": 12.5}
    ScoreRequest(orders=[good])
    for change, field in (
        ({"order_time": None}, "order_time"),
        ({"amount": -1.0}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"order_time": "2026-10-01T10:00:00"}, "order_time"),  # no time zone: ambiguous
        ({"features": {"amount": 1.0}}, "features"),
    ):
        body = {k: v for k, v in {**good, **change}.items() if v is not None}
        with pytest.raises(ValidationError, match=field):
            ScoreRequest(orders=[body])


@FAST
def test_a_huge_amount_or_an_order_after_free_ones_gets_a_finite_score(shop, tmp_path):
    """Valid orders at the edges: an amount past float32's range (1e284, found by fuzzing /score:
    the network's answer was NaN, a 500), and a paid order after only free ones (its amount
    against a mean of 0). The network scores both, with finite features online and offline alike."""
    from datetime import datetime, timezone

    from models.propensity import DCNConfig, DCNv2
    from pipeline.families.fraud.decisions import Bands
    from pipeline.families.fraud.pyfunc import FraudPyfunc
    from pipeline.families.fraud.scoring import dense_matrix
    from pipeline.families.fraud.serving import Order, OrderScorer, order_rows

    events, _ = shop
    network = DCNv2(DCNConfig(n_dense=len(DENSE), id_cardinalities=(), hidden=(8,)))
    features = order_features(orders_of(events), events)
    network.fit_scaler(torch.from_numpy(dense_matrix(features)))
    pyfunc = FraudPyfunc.from_parts("network", network.eval(), Bands(review_at=0.5, block_at=0.9))
    scorer = OrderScorer(pyfunc, _snapshot(events, tmp_path), "memory")
    at = datetime.fromtimestamp(scorer.snapshot.cutoff.timestamp() + 3600, timezone.utc)
    orders = [
        Order(user_id="big-spender", order_time=at, amount=6.9e284),
        Order(user_id="voucher", order_time=at, amount=0.0, order_id="free-1"),
        Order(user_id="voucher", order_time=at + timedelta(minutes=1), amount=0.0, order_id="free-2"),
        Order(user_id="voucher", order_time=at + timedelta(minutes=2), amount=30.0, order_id="paid"),
    ]
    # Online: the paid order's features once the free ones were scored (and remembered).
    for o in orders[1:3]:
        scorer.score_requests([[o]])
    online = scorer.features(order_rows(orders[3:]))
    assert online[0, DENSE.index("amount_vs_user_mean")] == 30.0  # against one unit, not 30 / 0
    answers = [scorer.score_requests([[o]])[0][0] for o in (orders[0], orders[3])]
    assert all(np.isfinite(a["score"]) and a["band"] in ("approve", "review", "block") for a in answers), answers
    assert all(np.isfinite(r["contribution"]) for a in answers for r in a["reasons"]), answers
    # Offline, the same orders: the same value.
    free = pl.DataFrame(
        {
            "session_id": ["free-1", "free-2", "paid"],
            "user_id": ["voucher"] * 3,
            "order_time": [o.order_time for o in orders[1:]],
            "amount": [0.0, 0.0, 30.0],
            "items": [1.0] * 3,
        }
    ).with_columns(pl.col("order_time").dt.cast_time_unit("us").alias("session_start"))
    none = [pl.lit(None, pl.String).alias(c) for c in ("device_id", "ip", "country", "payment_id")]
    purchases = free.select(
        "session_id", "user_id", pl.col("order_time").alias("event_time"), pl.lit("purchase").alias("event_type"), *none
    )
    offline = order_features(free.with_columns(none), purchases)
    assert offline["amount_vs_user_mean"].to_list() == [1.0, 0.0, 30.0]


@FAST
def test_the_gate_compares_cost_auc_pr_and_recall_at_budget_on_the_same_orders():
    import pandas as pd

    from pipeline.families.fraud import decisions
    from pipeline.families.fraud.evaluation import gate_statistic

    rows = pd.DataFrame({"label": [1, 0, 0, 1, 0, 0], "day": [0, 0, 0, 1, 1, 1]})
    column, cost = gate_statistic("cost_per_1000", rows)
    assert column == "cost" and cost(np.array([3.0, 0.0, 0.0, 3.0]), np.arange(4)) == pytest.approx(1500.0)
    column, ap = gate_statistic("auc_pr", rows)
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.05])
    assert column == "score" and ap(scores, np.arange(6)) == pytest.approx(
        decisions.average_precision(rows["label"].to_numpy(), scores)
    )
    # Resampled rows carry their own labels: the first three orders hold one fraud, ranked first.
    assert ap(scores[:3], np.arange(3)) == pytest.approx(1.0)
    _, recall = gate_statistic("recall_at_budget", rows)
    budget = decisions.load_cost_policy().review_budget_per_day
    assert budget >= 1 and recall(scores, np.arange(6)) == pytest.approx(1.0)
    assert gate_statistic("something_else", rows) is None


# The whole family: trained, evaluated, gated, registered, packaged, served ---------------------

# A short shop whose labels mature within its days: chargebacks 1 to 2 days late, a 2-day window.
FAMILY_SHOP = GenerateParams(
    seed=5,
    start_date="2026-10-01",
    days=17,  # the last is not published: the served champion has not seen it (a replay's day)
    events_per_day=3000,
    initial_users=1500,
    initial_items=800,
    fraud_rate=0.05,
    chargeback_days=(1.0, 2.0),
)


@pytest.fixture(scope="module")
def fraud_family(tmp_path_factory):
    import dataclasses

    from conftest import published_shop
    from pipeline.core.params import load_params
    from pipeline.lifecycle.gate import load_policy
    from pipeline.lifecycle.steps import retrain

    with published_shop(tmp_path_factory.mktemp("fraud-family"), FAMILY_SHOP, publish=FAMILY_SHOP.days - 1) as paths:
        params = load_params()
        short = dataclasses.replace(
            params.train_fraud, maturity_days=2, valid_days=3, test_days=3, min_train_days=4, epochs=10
        )
        params = dataclasses.replace(params, train_fraud=short)
        promoted = retrain(
            paths, params, "fraud", policy=dataclasses.replace(load_policy("fraud"), bootstrap_samples=200)
        )
        yield paths, params, promoted


def test_the_fraud_family_goes_through_every_step_and_serves(fraud_family, tmp_path):
    import httpx

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.serving.package import served

    paths, _, promoted = fraud_family
    client = mlflow_client(paths)
    champion = alias_version(client, "fraud", CHAMPION)
    assert champion is not None and str(champion.version) == str(promoted["version"])
    # The network's run: the gate compared the cost per order with both floors, resampling orders.
    candidate = client.get_run(promoted.get("candidate_run_id") or champion.run_id)
    assert "orders" in candidate.data.tags["gate.reasons"] and "cost_per_1000" in candidate.data.tags["gate.reasons"]
    for floor in ("rules", "lightgbm"):
        for metric in ("auc_pr", "recall_at_budget", "cost_per_1000"):
            assert f"eval_baseline_{floor}_{metric}" in candidate.data.metrics
    assert {"bands.dcn_v2.review_at", "bands.lightgbm.block_at", "bands.rules.review_at"} <= set(candidate.data.params)
    assert candidate.data.params["rules.left_out"]  # the rules the floor retired on its training orders, or "none"
    # Recall at the budget and the thresholds: in the run, the registry, /metadata.
    for key in ("eval_recall_at_budget", "eval_review_at", "eval_block_at", "eval_cost_per_1000"):
        assert key in champion.tags, key
    assert champion.tags["smoke_test"] == "passed"
    from pipeline.serving.auth import KeyStore

    keys = KeyStore.load(tmp_path / "api-keys.json")
    admin, client = keys.add("ops", "admin"), keys.add("checkout", "client")
    with (
        served(paths, champion.tags["bento_tag"], env={"SHOPML_PREDICTION_LOG": "off"}, api_keys=keys.path) as url,
        httpx.Client(timeout=30, headers={"authorization": f"Bearer {client}"}) as http,
    ):
        # Nobody in without a key; /metadata needs the admin key.
        anonymous = httpx.post(f"{url}/score", json={"orders": []}, timeout=30)
        assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        assert http.post(f"{url}/metadata", json={}).status_code == 403
        assert http.get(f"{url}/metrics").status_code == 403
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        metrics = httpx.get(f"{url}/metrics", headers={"x-api-key": admin}, timeout=30)
        assert metrics.status_code == 200 and "shopml" in metrics.text
        meta = http.post(f"{url}/metadata", json={}, headers={"authorization": f"Bearer {admin}"}).json()
        assert meta["model"] == "fraud" and meta["currency"] == "EUR"
        assert meta["bands"]["review_at"] <= meta["bands"]["block_at"] or meta["bands"]["block_at"] is None
        assert 0 <= meta["validation"]["recall_at_budget"] <= 1
        assert meta["policy"]["review_budget_per_day"] == 50
        order = {
            "order_id": "o-1",
            "user_id": "u1",
            "order_time": meta["features_as_of"],
            "amount": 120.0,
            "currency": "EUR",
            "device_id": "d-new",
            "country": "DE",
        }
        answer = http.post(f"{url}/score", json={"orders": [order]}).json()
        (scored,) = answer["scores"]
        assert (
            scored["order_id"] == "o-1"
            and 0 <= scored["score"] <= 1
            and scored["band"] in ("approve", "review", "block")
        )
        assert all({"feature", "value", "contribution"} <= set(r) for r in scored["reasons"])
        for change, field in (
            ({"order_time": None}, "order_time"),
            ({"amount": -5.0}, "amount"),
            ({"currency": "USD"}, "currency"),  # a real code, not the shop's
            ({"currency": "dollars"}, "currency"),
            ({"session_start": "0001-01-01T00:30:00+01:00"}, "session_start"),  # before year 1 in UTC: was a 500
        ):
            body = {k: v for k, v in {**order, **change}.items() if v is not None}
            response = http.post(f"{url}/score", json={"orders": [body]})
            assert response.status_code == 400 and field in response.text, (body, response.text)
        # A chargeback as it arrives: the admin key only (a checkout's key could mark anyone's card).
        # The provider's notice names the order scored above, and the service knows its keys.
        chargeback = {"order_id": "o-1", "time": meta["features_as_of"]}
        assert http.post(f"{url}/chargebacks", json={"chargebacks": [chargeback]}).status_code == 403
        as_admin = {"authorization": f"Bearer {admin}"}
        recorded = http.post(f"{url}/chargebacks", json={"chargebacks": [chargeback]}, headers=as_admin)
        assert recorded.status_code == 200 and recorded.json() == {"recorded": 1}, recorded.text
        # An order it never saw needs its account; sent without, a 400 naming the order.
        unseen = {"order_id": "o-elsewhere", "time": meta["features_as_of"]}
        refused = http.post(f"{url}/chargebacks", json={"chargebacks": [unseen]}, headers=as_admin)
        assert refused.status_code == 400 and "o-elsewhere" in refused.text, refused.text
        unseen["user_id"] = "u-elsewhere"
        recorded = http.post(f"{url}/chargebacks", json={"chargebacks": [unseen]}, headers=as_admin)
        assert recorded.json() == {"recorded": 1}, recorded.text
        undated = {k: v for k, v in chargeback.items() if k != "time"}
        refused = http.post(f"{url}/chargebacks", json={"chargebacks": [undated]}, headers=as_admin)
        assert refused.status_code == 400 and "time" in refused.text, refused.text
        # A sign-up likewise (a checkout's key could make a new account look old); an account's
        # next large order then knows it is minutes old.
        signup = {"user_id": "u-opened", "time": meta["features_as_of"], "device_id": "d-opened", "country": "DE"}
        assert http.post(f"{url}/signups", json={"signups": [signup]}).status_code == 403
        recorded = http.post(f"{url}/signups", json={"signups": [signup]}, headers=as_admin)
        assert recorded.status_code == 200 and recorded.json() == {"recorded": 1}, recorded.text
        again = http.post(f"{url}/signups", json={"signups": [signup]}, headers=as_admin)
        assert again.json() == {"recorded": 0}  # reported twice, kept once
        refused = http.post(f"{url}/signups", json={"signups": [{**signup, "country": "Germany"}]}, headers=as_admin)
        assert refused.status_code == 400 and "country" in refused.text, refused.text
        # A session likewise (a checkout's key could make a stranger's device look familiar).
        visit = {"user_id": "u-browser", "time": meta["features_as_of"], "device_id": "d-browser"}
        assert http.post(f"{url}/sessions", json={"sessions": [visit]}).status_code == 403
        recorded = http.post(f"{url}/sessions", json={"sessions": [visit, visit]}, headers=as_admin)
        assert recorded.status_code == 200 and recorded.json() == {"recorded": 1}, recorded.text
        refused = http.post(f"{url}/sessions", json={"sessions": [{**visit, "time": "2026-10-01"}]}, headers=as_admin)
        assert refused.status_code == 400 and "time" in refused.text, refused.text


def test_the_gate_scores_only_orders_whose_labels_had_matured(fraud_family):
    """The evaluation's orders are the test period's orders labelled as known at the data's end:
    an order of the last days (younger than the maturity window) is never scored as genuine."""
    import pandas as pd

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.data.version import open_dataset
    from pipeline.families.fraud.evaluation import split_of_run

    paths, params, _ = fraud_family
    client = mlflow_client(paths)
    run = client.get_run(alias_version(client, "fraud", CHAMPION).run_id)
    split = split_of_run(run.data.params)
    rows = pd.read_parquet(client.download_artifacts(run.info.run_id, "evaluation/rows.parquet", str(paths.home)))
    events = open_dataset(paths, run.data.tags["dataset_version"]).events()
    orders = orders_of(events)
    known = labels_as_of(orders, events, split.end, params.train_fraud.maturity_days)
    inside = known.filter((pl.col("order_time") >= split.test_start) & (pl.col("order_time") < split.test_end))
    labelled = inside.filter(pl.col("label").is_not_null())
    assert sorted(rows["user_id"]) == sorted(labelled["session_id"].to_list())
    assert rows["label"].sum() == labelled["label"].sum() > 0
    young = orders.filter(pl.col("order_time") >= split.end - timedelta(days=params.train_fraud.maturity_days))
    assert young.height > 0 and not set(young["session_id"]) & set(rows["user_id"])


def test_the_monitor_judges_the_floors_on_the_orders_the_champion_scored(fraud_family):
    """Once a served day's labels have matured, the monitor scores the floors of the champion's run
    (the rules, LightGBM) on the very orders the champion scored, each with its features as of its
    time: their online figures, and the champion minus each floor over those orders, which the
    retrain rules read. The floor file of the champion's own kind answers exactly as it did; an
    order the events do not hold is judged for nobody but the champion."""
    import dataclasses
    from datetime import datetime, timezone
    from pathlib import Path

    import bentoml

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.data.predictions import default_root
    from pipeline.data.version import current_dataset_version, open_dataset
    from pipeline.lifecycle import monitor as monitoring
    from pipeline.serving.common import load_pyfunc
    from pipeline.serving.package import use_bento_home
    from pipeline.serving.predlog import PredictionLog

    paths, _, _ = fraud_family
    client = mlflow_client(paths)
    mv = alias_version(client, "fraud", CHAMPION)
    use_bento_home(paths)
    champion = load_pyfunc(bentoml.bentos.get(mv.tags["bento_tag"]).info.args["model_tag"]).unwrap_python_model()
    events = open_dataset(paths, current_dataset_version(paths).version).events()
    # The shop's 12th day (6 of its orders are fraud): its chargebacks, 1 to 2 days late, have all
    # arrived by the shop's end, 4 days later.
    day = "2026-10-12"
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    every = order_features(orders_of(events), events)
    served = every.filter((pl.col("order_time") >= start) & (pl.col("order_time") < start + timedelta(days=1)))
    assert served.height > 100
    scores = champion.scores(served).tolist()
    ids = served["session_id"].to_list()
    # Two orders a request (a checkout batch: the day's first half beside its second, so that the
    # morning's frauds share requests with genuine orders), and one order no event stream holds.
    half = (len(ids) + 1) // 2
    pairs = [[i, i + half] if i + half < len(ids) else [i] for i in range(half)]
    requests = [([ids[j] for j in pair], [scores[j] for j in pair]) for pair in pairs]
    requests.append((["not-an-order"], [0.5]))
    times = [served["order_time"][pair[-1]] for pair in pairs] + [served["order_time"][-1]]
    # Logged by the services' own writer, as /score logs its answers.
    log = PredictionLog(default_root() or str(paths.home / "predictions"), "fraud")
    for i, ((items, values), ts) in enumerate(zip(requests, times, strict=True)):
        recorded = log.record(
            request_id=f"r{i}",
            ts=ts,
            model_version=str(mv.version),
            role="champion",
            user_id=f"u{i}",
            items=items,
            scores=values,
            source="model",
        )
        assert recorded
    log.close()
    assert log.written == len(requests)
    policy = dataclasses.replace(monitoring.load_monitoring_policy("fraud"), horizon_hours=72, bootstrap_samples=200)
    result = monitoring.monitor(paths, "fraud", day, policy=policy)
    assert result.judged
    mine = result.online[f"champion v{mv.version}"]
    assert mine["orders"] == len(ids) + 1
    labels = (
        served["session_id"]
        .is_in(events.filter(pl.col("event_type") == "chargeback")["session_id"].implode())
        .to_numpy()
    )
    assert labels.sum() >= 5
    from pipeline.families.fraud.decisions import average_precision
    from pipeline.families.fraud.pyfunc import FraudPyfunc

    judged = pl.read_parquet(Path(result.report).parent / "outcomes.parquet")
    for name in ("rules", "lightgbm"):
        floor = result.online[f"floor {name}"]
        assert floor["orders"] == len(ids)  # every order but the unknown one
        # Each order's answer is the floor file's score of that order's features as of its time.
        local = client.download_artifacts(mv.run_id, f"baseline/{name}.json", str(paths.home / "check"))
        want = dict(zip(ids, FraudPyfunc.from_file(local).scores(served).tolist(), strict=True))
        got = judged.filter((pl.col("role") == "floor") & (pl.col("model_version") == name))
        assert sorted(got["item_id"]) == sorted(ids)
        np.testing.assert_array_equal(got["score"].to_numpy(), [want[i] for i in got["item_id"]])
        assert floor["auc_pr"] == pytest.approx(
            average_precision(labels.astype(float), np.array([want[i] for i in ids]))
        )
        diff, (low, high) = result.floors[name]
        assert low <= diff <= high
        if champion.kind == name:  # a floor serves: its floor file is itself
            assert diff == low == high == 0.0


def test_the_online_protocol_runs_offline_on_the_test_orders_for_the_monitor_and_the_gate(fraud_family, monkeypatch):
    """The evaluation runs the monitor's protocol on the run's test orders: each order judged fraud
    when its chargeback arrives within the monitoring horizon of the order (not as known at the
    data's end, as the gate's figures are), only orders whose horizon ends by the data's end, each
    with its features as of its time. The run logs each side's figures (``session_<side>.*``, which
    the monitor prints beside the online ones) and the per-order rows the gate's online-protocol
    floors read; the candidate and both floors score the very orders the gate's test set holds,
    with the same scores."""
    import dataclasses
    import tempfile

    import mlflow

    from pipeline.core.tracking import logged_model_uri, mlflow_client
    from pipeline.data.version import open_dataset
    from pipeline.families.fraud import evaluation as fraud_eval
    from pipeline.families.fraud.decisions import average_precision
    from pipeline.families.fraud.monitoring import MONITORING
    from pipeline.families.fraud.pyfunc import FraudPyfunc
    from pipeline.lifecycle import evaluate
    from pipeline.lifecycle.gate import _online_protocol_rows
    from pipeline.lifecycle.monitor import load_monitoring_policy

    paths, _, promoted = fraud_family
    client = mlflow_client(paths)
    run = client.get_run(promoted.get("candidate_run_id") or promoted["run_id"])
    params = run.data.params
    split = fraud_eval.split_of_run(params)
    dataset = open_dataset(paths, run.data.tags["dataset_version"])
    events = dataset.events()
    test = fraud_eval.test_set(dataset, None, params)  # the gate's orders, features and scores
    ids = test.users.tolist()
    charged = dict(
        events.filter(pl.col("event_type") == "chargeback")
        .group_by("session_id")
        .agg(pl.col("event_time").min())
        .iter_rows()
    )
    when = dict(zip(ids, test.context["order"]["order_time"].to_list(), strict=True))
    model = mlflow.pyfunc.load_model(logged_model_uri(client, run.info.run_id))
    want = {"candidate": fraud_eval.predict_batches(model, test.inputs, 20_000)["score"].to_numpy()}
    for name in fraud_eval.FLOORS:
        floor = client.download_artifacts(run.info.run_id, f"baseline/{name}.json", str(paths.home / "protocol"))
        want[name] = FraudPyfunc.from_file(floor).scores(test.inputs)

    # A 36-hour window: every test order's ends by the data's end (2 days after the test period),
    # and the chargebacks that come 36 to 48 hours late count in the gate's labels, not here.
    hours = 36
    policy = dataclasses.replace(load_monitoring_policy("fraud"), horizon_hours=hours)
    labels = np.array([float(i in charged and when[i] < charged[i] <= when[i] + timedelta(hours=hours)) for i in ids])
    assert 0 < labels.sum() < test.labels.sum()  # the two protocols differ on this shop's orders
    monkeypatch.setattr(evaluate, "load_monitoring_policy", lambda name: policy)
    evaluate.evaluate_candidate(paths, "fraud", run.info.run_id)
    logged = client.get_run(run.info.run_id).data.metrics
    for side, scores in want.items():
        assert logged[f"session_{side}.orders"] == len(ids)
        assert logged[f"session_{side}.auc_pr"] == pytest.approx(average_precision(labels, scores), abs=1e-6)
        assert logged[f"session_{side}.fraud_rate"] == pytest.approx(labels.mean())
    with tempfile.TemporaryDirectory() as tmp:
        metric, rows = _online_protocol_rows(client, "fraud", run.info.run_id, tmp)
    # Paired by order, each side's statistic there is its logged figure (the gate's floor check).
    assert metric == "auc_pr" and len(rows.candidate) == len(ids) and set(rows.baselines) == set(fraud_eval.FLOORS)
    every = np.arange(len(ids))
    for side, values in {"candidate": rows.candidate, **rows.baselines}.items():
        assert rows.statistic(values, every) == pytest.approx(logged[f"session_{side}.auc_pr"], abs=1e-6)

    # A 60-hour window ends after the data for the test period's last 12 hours: those are left out.
    late = dataclasses.replace(policy, horizon_hours=60)
    judged = MONITORING.offline(model, dataset, None, late, {"client": client, "run": run})
    inside = {i for i in ids if when[i] + timedelta(hours=60) <= split.end}
    assert 0 < len(inside) < len(ids)
    assert sorted(judged["model_version"].unique()) == ["candidate", *sorted(fraud_eval.FLOORS)]
    for (_, side), part in judged.group_by("role", "model_version"):
        assert sorted(part["item_id"]) == sorted(inside), side
        got = dict(zip(part["item_id"], part["score"], strict=True))
        np.testing.assert_allclose(
            [got[i] for i in ids if i in inside],
            [s for i, s in zip(ids, want[side], strict=True) if i in inside],
            rtol=0,
            atol=1e-6,
        )


def test_a_replayed_day_reaches_the_service_as_it_happened(fraud_family, tmp_path):
    """``shopml replay`` of a day the champion's snapshot does not hold sends its sign-ups
    (``/signups``), chargebacks (``/chargebacks``: the order and its account; the service knows
    its device and card), sessions begun without an order (``/sessions``) and orders (``/score``)
    one at a time, in time order, as the shop's services would: every logged score is the
    champion's score of the order's features as of its time, computed offline from the published
    events and the day's. Sent concurrently, a card-testing burst's later orders were scored before
    the earlier ones were remembered; without the sign-ups, the accounts opened that day looked as
    old as the shop's first customers."""
    import time
    from datetime import datetime, timezone

    import bentoml

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.data.predictions import read_predictions
    from pipeline.data.version import current_dataset_version, open_dataset
    from pipeline.families.fraud.evaluation import SCORE_TOLERANCE
    from pipeline.serving.common import load_pyfunc
    from pipeline.serving.package import served, use_bento_home
    from pipeline.serving.replay import read_day, replay

    paths, _, _ = fraud_family
    mv = alias_version(mlflow_client(paths), "fraud", CHAMPION)
    use_bento_home(paths)
    tag = mv.tags["bento_tag"]
    champion = load_pyfunc(bentoml.bentos.get(tag).info.args["model_tag"]).unwrap_python_model()
    day = "2026-10-17"
    today = read_day(next((paths.landing / "events").glob(f"events-{day}.*")))
    published = open_dataset(paths, current_dataset_version(paths).version).events()
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    # This small shop's day holds few frauds: add a card-testing burst as the generator's are, by an
    # account opened three minutes before it (six orders a minute apart, one device, a card each).
    row = today.filter(pl.col("event_type") == "purchase").row(0, named=True)
    noon, tester = start + timedelta(hours=12), {"user_id": "tester", "device_id": "tester-device"}
    burst = [
        {
            **row,
            **tester,
            "event_time": noon + timedelta(minutes=k),
            "session_id": f"test-{k}",
            "payment_id": f"card-{k}",
        }
        for k in range(6)
    ]
    signup = {**row, **tester, "event_time": noon - timedelta(minutes=3), "event_type": "signup", "payment_id": None}
    # The burst's first order is disputed before its fourth: a notice of an order scored today.
    disputed = {**burst[0], "event_time": noon + timedelta(minutes=2, seconds=30), "event_type": "chargeback"}
    today = pl.concat([today, pl.DataFrame([*burst, signup, disputed], schema=today.schema)]).sort("event_time")
    assert published["event_time"].max() < start  # the day is after the snapshot's cut-off
    known = pl.concat([published, today.select(published.columns)], how="vertical_relaxed")
    expected = order_features(orders_of(known), known).filter(pl.col("order_time") >= start)
    want = dict(zip(expected["session_id"].to_list(), champion.scores(expected).tolist(), strict=True))
    opened = today.filter(pl.col("event_type") == "signup")["user_id"]
    charged = today.filter(pl.col("event_type") == "chargeback")["session_id"]
    # What a careless replay gets wrong is on this day: bursts, accounts opened today, and
    # chargebacks arriving between orders, of orders before the snapshot and of today's.
    assert expected.filter(pl.col("device_orders_10m") > 0).height >= 5
    assert expected["user_id"].is_in(opened.implode()).sum() >= 7
    assert expected.filter(pl.col("session_id").is_in(["test-3", "test-4", "test-5"]))["device_chargebacks"].min() == 1
    assert charged.is_in(published["session_id"].implode()).sum() >= 1

    log, env = tmp_path / "log", {"SHOPML_ACCEPT_EVENT_TIME": "1", "SHOPML_PREDICTION_LOG_FLUSH_S": "1"}
    env |= {"SHOPML_PREDICTION_LOG": str(log), "SHOPML_FRAUD_RECENT": str(tmp_path / "recent.sqlite")}
    with served(paths, tag, env=env) as url:
        result = replay(url, "fraud", today, concurrency=8)
        time.sleep(3)  # a flush a second
    logged = read_predictions(str(log), "fraud", day).explode("items", "scores")
    got = dict(zip(logged["items"].to_list(), logged["scores"].to_list(), strict=True))
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=0, atol=SCORE_TOLERANCE)
    assert result.failed == 0 and result.in_order, result.statuses
    ordered = today.filter(pl.col("event_type") == "purchase")["session_id"].unique().implode()
    browsed = today.filter(~pl.col("event_type").is_in(["signup", "chargeback"]) & ~pl.col("session_id").is_in(ordered))
    reported = {
        "signups": opened.n_unique(),
        "chargebacks": charged.n_unique(),
        "sessions": browsed["session_id"].n_unique(),
    }
    assert result.endpoints == {"score": len(want), **reported}


@FAST
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("order_time", "0001-01-01T00:30:00+01:00"),
        ("session_start", "0001-01-01T00:30:00+01:00"),
        ("order_time", "9999-12-31T23:30:00-01:00"),
    ],
)
def test_a_time_outside_utc_s_years_is_refused_naming_its_field(field, value):
    """A time that is valid ISO 8601 but lies before year 1 or after 9999 once in UTC is refused with
    the field's name (it was a 500: the conversion to UTC overflowed); the edges inside are kept."""
    from pydantic import ValidationError

    from pipeline.families.fraud.serving import Chargeback, Order, order_frame

    order = {"user_id": "u1", "order_time": "9999-12-31T22:00:00-01:00", "amount": 1.0}
    with pytest.raises(ValidationError, match=field) as error:
        Order(**{**order, field: value})
    assert "outside the years 1 to 9999 in UTC" in str(error.value)
    with pytest.raises(ValidationError, match="time"):
        Chargeback(order_id="o1", time=value, user_id="u1")
    kept = Order(**{**order, "session_start": "0001-01-01T00:30:00-01:00"})
    assert order_frame([kept]).height == 1


@FAST
def test_a_served_order_is_fraud_only_if_its_chargeback_came_within_the_window():
    from datetime import datetime, timezone

    from pipeline.families.fraud.monitoring import outcomes
    from pipeline.lifecycle.monitor import MonitoringPolicy

    t = datetime(2026, 10, 1, 12, tzinfo=timezone.utc)
    answers = pl.DataFrame(
        {
            "request_id": ["r1", "r2"],
            "ts": [t, t],
            "user_id": ["u1", None],
            "model_version": ["3", "3"],
            "role": ["champion", "champion"],
            "items": [["o1", "o2"], ["o3"]],
            "scores": [[0.9, 0.1], [0.5]],
        }
    )
    events = pl.DataFrame(
        {
            "event_time": [t + timedelta(days=3), t + timedelta(days=40)],
            "session_id": ["o1", "o3"],
            "event_type": ["chargeback", "chargeback"],
        }
    )
    got = outcomes(answers, events, MonitoringPolicy(horizon_hours=30 * 24)).sort("item_id")
    assert got["item_id"].to_list() == ["o1", "o2", "o3"]
    assert got["label"].to_list() == [1.0, 0.0, 0.0]  # o3's chargeback came after the window
    assert got["score"].to_list() == [0.9, 0.1, 0.5]
    # o1 scored again an hour later (a retry), and by a challenger: one row per order and scorer,
    # at the order's first answer.
    again = pl.DataFrame(
        {
            "request_id": ["r3", "r4"],
            "ts": [t + timedelta(hours=1), t + timedelta(hours=1)],
            "user_id": ["u1", "u1"],
            "model_version": ["3", "4"],
            "role": ["champion", "challenger"],
            "items": [["o1"], ["o1"]],
            "scores": [[0.2], [0.7]],
        }
    )
    got = outcomes(pl.concat([again, answers]), events, MonitoringPolicy(horizon_hours=30 * 24))
    got = got.sort("model_version", "item_id")
    assert got.select("model_version", "item_id", "score").rows() == [
        ("3", "o1", 0.9),
        ("3", "o2", 0.1),
        ("3", "o3", 0.5),
        ("4", "o1", 0.7),
    ]


@FAST
def test_workers_share_the_orders_they_scored(tmp_path):
    """Two workers (two ``RecentOrders`` on one file): an order one scored is found by the other under
    each of its keys, once; orders older than the window before the newest go at pruning, with
    their sightings and chargebacks, once the served snapshot holds them."""
    from datetime import datetime, timezone

    from pipeline.families.fraud.serving import RecentOrders, _us, lookup_keys

    store = str(tmp_path / "recent.sqlite")
    a, b = RecentOrders(store), RecentOrders(store)
    t = datetime(2026, 10, 1, 12, tzinfo=timezone.utc)
    order = {
        "session_id": "o1",
        "user_id": "u1",
        "order_time": t,
        "amount": 5.0,
        "items": 1.0,
        "session_start": t,
        "device_id": "d1",
        "ip": None,
        "country": "DE",
        "payment_id": "p1",
    }
    a.add([order])
    a.add([order])  # a retry: kept once
    keys = {"user_id": ["u9"], "device_id": ["d1"], "payment_id": ["p1"]}
    orders, seen, _ = b.arrays(
        lookup_keys(keys, ("user_id", "device_id", "ip", "payment_id")), lookup_keys(keys, ("device_id",)), []
    )
    # Found under its device and its card: once per key.
    assert orders["session_id"].tolist() == ["o1", "o1"] and orders["order_time"][0] == _us(t)
    assert set(seen["user_id"].tolist()) == {"u1"} and seen["device_id"].tolist() == ["d1"]
    earlier = {
        **order,
        "session_id": "o0",
        "order_time": t - timedelta(hours=1),
        "session_start": t - timedelta(hours=1),
    }
    b.add([earlier])  # the same device pair seen earlier: one sighting, at the earlier time
    _, seen, _ = a.arrays([], lookup_keys(keys, ("device_id",)), [])
    assert seen["event_time"].tolist() == [_us(t - timedelta(hours=1))]
    b.PRUNE_EVERY = 1
    later = {
        **order,
        "session_id": "o2",
        "user_id": "u2",
        "order_time": t + timedelta(days=60),
        "session_start": t + timedelta(days=60),
    }
    b.add([later])
    orders, _, _ = a.arrays(lookup_keys(keys, ("device_id",)), [], [])
    assert orders["session_id"].tolist() == ["o2"]

    # Behind a snapshot cut before them, old rows are the only record of their facts, which
    # training counts over all time: kept, whatever their age, until a snapshot holds them.
    from pipeline.families.fraud.serving import Chargeback

    def pruned_store(covered_until) -> tuple[list, list, list]:
        store = RecentOrders(str(tmp_path / f"recent-{covered_until:%Y%m%d}.sqlite"), covered_until=covered_until)
        store.add([order])
        store.add_chargebacks([Chargeback(order_id="o1", time=t + timedelta(days=5), user_id="u1", device_id="d1")])
        store.PRUNE_EVERY = 1
        store.add([later])
        found = store.arrays(
            lookup_keys(keys, ("device_id",)), lookup_keys({"user_id": ["u1"]}, ("user_id",)), ["d:d1"]
        )
        return (
            found[0]["session_id"].tolist(),
            sorted(set(found[1]["user_id"].tolist())),
            found[2]["session_id"].tolist(),
        )

    assert pruned_store(t - timedelta(days=1)) == (["o1", "o2"], ["u1"], ["o1"])
    assert pruned_store(t + timedelta(days=30)) == (["o2"], [], [])  # the snapshot holds them

    # A champion and a challenger on one file, the challenger's snapshot newer: the rows the
    # champion's snapshot lacks stay while the champion is served, and go once it is not.
    shared = str(tmp_path / "shared.sqlite")
    champion = RecentOrders(shared, covered_until=t - timedelta(days=1))
    challenger = RecentOrders(shared, covered_until=t + timedelta(days=30))
    champion.add([order])
    challenger.PRUNE_EVERY = 1
    challenger.add([later])
    assert champion.arrays(lookup_keys(keys, ("device_id",)), [], [])[0]["session_id"].tolist() == ["o1", "o2"]
    with champion.db:
        champion.db.execute("UPDATE holders_v1 SET seen = 0 WHERE covered_until = ?", (champion.covered_until,))
    challenger.add([{**later, "session_id": "o3"}])
    assert champion.arrays(lookup_keys(keys, ("device_id",)), [], [])[0]["session_id"].tolist() == ["o2", "o3"]

    # A version adding orders refreshes its row hourly, not on every write.
    def seen() -> float:
        return champion.db.execute(
            "SELECT seen FROM holders_v1 WHERE covered_until = ?", (champion.covered_until,)
        ).fetchone()[0]

    champion.add([{**later, "session_id": "o4"}])
    assert seen() == 0
    champion._held_at -= champion.HOLD_REFRESH_S
    champion.add([{**later, "session_id": "o5"}])
    assert seen() == pytest.approx(time.time(), abs=60)


def test_a_model_changed_after_training_is_refused_before_it_is_loaded(fraud_family):
    """Whoever can write the artifact store or the Bento store must not get their pickle loaded: the
    digest the training run recorded (copied to the version beside the gate decision) is checked by
    evaluation, packaging and the services before any file of the model is unpickled."""
    from pathlib import Path

    import bentoml
    import mlflow

    from pipeline.core.integrity import DIGEST_TAG, IntegrityError
    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.lifecycle.evaluate import evaluate_candidate
    from pipeline.serving.common import load_pyfunc
    from pipeline.serving.package import _import_model, use_bento_home

    paths, _, _ = fraud_family
    client = mlflow_client(paths)
    mv = alias_version(client, "fraud", CHAMPION)
    assert len(mv.tags[DIGEST_TAG]) == 64 and client.get_run(mv.run_id).data.tags[DIGEST_TAG] == mv.tags[DIGEST_TAG]
    model_id = mv.source.removeprefix("models:/")
    stored = Path(mlflow.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    target = stored / "MLmodel"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\n# tampered\n")
        with pytest.raises(IntegrityError, match="changed after training"):
            evaluate_candidate(paths, "fraud", mv.run_id)
        use_bento_home(paths)
        with pytest.raises(IntegrityError, match="changed after training"):
            _import_model("fraud", mv, "fraud:tampered-check")
        with pytest.raises(bentoml.exceptions.NotFound):
            bentoml.models.get("fraud:tampered-check")  # nothing was imported
    finally:
        target.write_bytes(original)
    # The floors' files are models too (LightGBM's text, the rules): checked the same way.
    floor_file = Path(client.get_run(mv.run_id).info.artifact_uri.removeprefix("file://")) / "baseline" / "rules.json"
    original = floor_file.read_bytes()
    try:
        floor_file.write_bytes(original.replace(b"}", b', "tampered": 1}', 1))
        with pytest.raises(IntegrityError, match="baseline/ files"):
            evaluate_candidate(paths, "fraud", mv.run_id)
    finally:
        floor_file.write_bytes(original)
    bento_model = bentoml.models.get(bentoml.bentos.get(mv.tags["bento_tag"]).info.args["model_tag"])
    served = Path(bento_model.path) / "mlflow_model" / "MLmodel"
    original = served.read_bytes()
    try:
        served.write_bytes(original + b"\n# tampered\n")
        with pytest.raises(IntegrityError, match="changed after training"):
            load_pyfunc(str(bento_model.tag))
    finally:
        served.write_bytes(original)
    assert load_pyfunc(str(bento_model.tag)).unwrap_python_model().kind in ("rules", "lightgbm", "network")


@FAST
def test_the_repeats_benchmark_leaves_out_a_fresh_share_of_training_orders_and_measures_the_spread():
    from benchmarks.fraud_repeats import spread, training_orders

    train = pl.DataFrame({"session_id": [f"s{i}" for i in range(20_000)], "order_time": list(range(20_000))})
    assert training_orders(train, 0.0, 3) is train
    a, b = training_orders(train, 0.01, 0), training_orders(train, 0.01, 1)
    assert 19_700 < a.height < 19_900 and 19_700 < b.height < 19_900
    assert a["order_time"].is_sorted() and a.equals(training_orders(train, 0.01, 0))  # drawn again: the same
    assert set(a["session_id"]) != set(b["session_id"])  # another repeat leaves out others

    def run(lightgbm: float, network: float) -> dict:
        keys = ("cost_per_1000", "auc_pr", "cost_per_1000_truth", "auc_pr_truth")
        return {"lightgbm": dict.fromkeys(keys, lightgbm), "dcn_v2": dict.fromkeys(keys, network)}

    s = spread([run(90.0, 120.0), run(75.0, 70.0), run(60.0, 80.0)])
    assert s["lightgbm"]["cost_per_1000"] == {"min": 60.0, "max": 90.0, "std": 15.0}
    assert s["difference"]["cost_per_1000"]["min"] == -5.0 and s["difference"]["cost_per_1000"]["max"] == 30.0
    assert s["network_cheaper"] == 1
