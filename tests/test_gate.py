"""The promotion gate's rules on per-user values with known differences (no MLflow, no models)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.families import base
from pipeline.lifecycle.gate import (
    Policy,
    PolicyError,
    Rows,
    champion_ineligibility,
    decide,
    latency_context,
    load_policy,
    positive_labels,
)

pytestmark = pytest.mark.fast


def MEAN(values, rows):
    return float(values.mean())


def _policy(**kw) -> Policy:
    return Policy(metric="ndcg_at_20", floors=("popularity",), bootstrap_samples=500, **kw)


def _paired(candidate: np.ndarray, champion: np.ndarray | None = None, floor: np.ndarray | None = None) -> Rows:
    """One row per user; the popularity floor a tenth of the candidate's users' values unless given."""
    floor = np.where(np.arange(candidate.size) % 10 == 0, candidate, 0.0) if floor is None else floor
    return Rows(np.arange(candidate.size), candidate, MEAN, champion, {"popularity": floor})


def _users(seed: int, n: int = 2000, rate: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < rate, 1.0 / np.log2(rng.integers(0, 20, n) + 2), 0.0)


def test_the_repository_policy_loads_and_a_bad_rule_is_named(tmp_path):
    assert load_policy("next_item").metric == "ndcg_at_20"
    # The strongest simple baselines are the floors.
    assert set(load_policy("purchase_propensity").floors) == {"logistic_regression", "lightgbm"}
    assert set(load_policy("next_item").floors) == {"popularity", "cooccurrence"}
    bad = tmp_path / "policy.yaml"
    bad.write_text("next_item:\n  metric: ndcg_at_20\n  min_improvment: 0.01\n")
    with pytest.raises(PolicyError, match=r"policy.yaml: next_item.min_improvment: not a known key \(keys: metric, "):
        load_policy("next_item", bad)
    bad.write_text("next_item:\n  metric: ndcg_at_20\n  confidence: 1.5\n")
    with pytest.raises(PolicyError, match=r"next_item.confidence: must be less than 1, got 1.5"):
        load_policy("next_item", bad)
    bad.write_text("next_item:\n  floors: [popularity]\n  require_smoke_test: maybe\n")
    with pytest.raises(
        PolicyError,
        match=r"next_item.metric: required\n.*next_item.require_smoke_test: "
        r"must be true or false, got 'maybe'",
    ):
        load_policy("next_item", bad)
    with pytest.raises(PolicyError, match="no section for model 'purchase_propensity'"):
        load_policy("purchase_propensity", bad)


def test_a_clearly_better_candidate_is_promoted():
    champion = _users(0)
    candidate = champion.copy()
    candidate[np.flatnonzero(champion == 0)[:150]] = 1.0  # 150 more users get their item first
    d = decide(
        _policy(),
        {"ndcg_at_20": candidate.mean()},
        {"popularity": 0.01},
        {"ndcg_at_20": champion.mean()},
        "3",
        _paired(candidate, champion),
    )
    assert d.passed, d.summary()
    assert d.interval[0] > 0 and d.champion_version == "3"


def test_a_worse_candidate_is_rejected():
    champion = _users(0)
    candidate = champion.copy()
    candidate[np.flatnonzero(champion > 0)[:60]] = 0.0
    d = decide(
        _policy(),
        {"ndcg_at_20": candidate.mean()},
        {"popularity": 0.01},
        {"ndcg_at_20": champion.mean()},
        "3",
        _paired(candidate, champion),
    )
    assert not d.passed
    assert any(r.startswith("FAIL improvement") for r in d.reasons)


def test_a_noisy_equal_candidate_is_rejected_as_not_significant():
    # Two draws of the same distribution; pick a pair where the candidate happens to be ahead.
    champion = _users(0)
    candidate = next(c for c in (_users(s) for s in range(1, 50)) if c.mean() > champion.mean())
    d = decide(
        _policy(),
        {"ndcg_at_20": candidate.mean()},
        {"popularity": 0.01},
        {"ndcg_at_20": champion.mean()},
        "3",
        _paired(candidate, champion),
    )
    assert not d.passed
    assert any(r.startswith("PASS improvement") for r in d.reasons)  # ahead on the point estimate...
    assert any(r.startswith("FAIL significance") and "not significantly better" in r for r in d.reasons)


def _floor_case(candidate: np.ndarray, floor: np.ndarray, **policy):
    rows = _paired(candidate, floor=floor)
    return decide(_policy(**policy), {"ndcg_at_20": candidate.mean()}, {"popularity": floor.mean()}, rows=rows)


def test_the_first_model_passes_only_if_its_interval_over_the_floor_lies_above_zero():
    floor = _users(0)
    better = floor.copy()
    better[np.flatnonzero(floor == 0)[:150]] = 1.0
    above = _floor_case(better, floor)
    assert above.passed, above.summary()
    low, high = above.floor_intervals["popularity"]
    assert 0 < low < better.mean() - floor.mean() < high
    assert any(r.startswith("PASS floor popularity: ndcg_at_20") and "95% interval [+" in r for r in above.reasons)
    below = _floor_case(floor, better)
    assert not below.passed and below.strongest_floor == "popularity"
    assert any(r.startswith("FAIL floor popularity: ndcg_at_20") for r in below.reasons)


def test_a_first_model_within_noise_of_its_floor_is_refused_though_ahead_on_the_mean():
    # The candidate and the floor are two draws of the same distribution, the candidate ahead by chance:
    # the point comparison the gate used to make would promote it.
    floor = _users(0)
    candidate = next(c for c in (_users(s) for s in range(1, 50)) if c.mean() > floor.mean())
    d = _floor_case(candidate, floor)
    assert not d.passed, d.summary()
    low, high = d.floor_intervals["popularity"]
    assert low < 0 < high
    assert any(r.startswith("FAIL floor popularity") and "not above the floor" in r for r in d.reasons)
    assert d.strongest_floor == "popularity"  # it serves instead: a shop keeps a model


def test_a_floor_margin_in_the_policy_raises_the_bar():
    floor = _users(0)
    better = floor.copy()
    better[np.flatnonzero(floor == 0)[:150]] = 1.0  # about +0.075 over 2,000 users
    assert _floor_case(better, floor, floor_margin=0.02).passed
    assert not _floor_case(better, floor, floor_margin=0.2).passed


def test_a_champion_that_saw_the_candidates_test_days_is_refused():
    summary = {
        "champion": {"metrics": {}},
        "champion_version": "4",
        "test_start": "2026-11-08T00:00:00+00:00",
        "champion_data_end": "2026-11-09T00:00:00+00:00",
    }
    why = champion_ineligibility(summary)
    assert why and "v4 learned from data up to 2026-11-09" in why and "2026-11-08" in why
    assert champion_ineligibility({**summary, "champion_data_end": "2026-11-08T00:00:00+00:00"}) is None
    assert champion_ineligibility({**summary, "champion": None}) is None
    champion = _users(0)
    candidate = champion.copy()
    candidate[np.flatnonzero(champion == 0)[:150]] = 1.0
    d = decide(
        _policy(),
        {"ndcg_at_20": candidate.mean()},
        {"popularity": 0.01},
        {"ndcg_at_20": champion.mean()},
        "4",
        _paired(candidate, champion),
        champion_ineligible=why,
    )
    assert not d.passed and "FAIL champion eligibility: " + why in d.reasons


def test_the_interval_resamples_users_not_rows():
    # 30 users of 20 rows each; a user's rows share one difference (a user-level effect). Resampling
    # rows treats 600 rows as independent and finds the candidate better; resampling users does not.
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(30), 20)
    per_user = rng.normal(0.03, 0.1, 30)
    champion = rng.random(users.size)
    candidate = champion + per_user[users]
    policy = Policy(metric="m", bootstrap_samples=1000)

    def gate(groups):
        return decide(
            policy, {"m": candidate.mean()}, {}, {"m": champion.mean()}, "1", Rows(groups, candidate, MEAN, champion)
        )

    assert gate(np.arange(users.size)).passed  # rows as if independent: wrongly significant
    by_user = gate(users)
    assert not by_user.passed and by_user.interval[0] < 0 < by_user.interval[1]


def test_guards_on_latency_and_size_reject_a_model_that_beats_everything():
    floor = _users(0)
    better = floor.copy()
    better[np.flatnonzero(floor == 0)[:150]] = 1.0
    d = decide(
        _policy(max_latency_ms=50, max_model_mb=10),
        {"ndcg_at_20": better.mean()},
        {"popularity": floor.mean()},
        rows=_paired(better, floor=floor),
        latency_ms=80.0,
        model_mb=4.0,
    )
    assert not d.passed
    assert "FAIL latency: p95 80.0 ms (limit 50 ms)" in d.reasons and "PASS size: 4.0 MB (limit 10 MB)" in d.reasons

    # Measured on a host busier than its cores, the refusal says so; a quiet host, or an evaluation
    # from before the load was recorded, adds nothing.
    busy = latency_context({"host_load_1m": 3.9, "host_cpus": 2})
    assert busy.startswith("measured while the host's 1-minute load average was 3.9 on 2 cores")
    assert latency_context({"host_load_1m": 1.5, "host_cpus": 2}) == latency_context({}) == ""
    d = decide(
        _policy(max_latency_ms=50),
        {"ndcg_at_20": better.mean()},
        {"popularity": floor.mean()},
        rows=_paired(better, floor=floor),
        latency_ms=80.0,
        latency_context=busy,
    )
    assert f"FAIL latency: p95 80.0 ms (limit 50 ms); {busy}" in d.reasons
    fast = decide(
        _policy(max_latency_ms=50), {"ndcg_at_20": 1.0}, {"popularity": 0.0}, latency_ms=20.0, latency_context=busy
    )
    assert "PASS latency: p95 20.0 ms (limit 50 ms)" in fast.reasons


class _Clock:
    """Stands in for ``time`` in ``families.base``: the fake model below moves it on."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _TimedModel:
    """Each one-row predict takes ``cost_ms(request, call)`` on the fake clock."""

    def __init__(self, clock: _Clock, cost_ms) -> None:
        self.clock, self.cost_ms, self.calls = clock, cost_ms, 0

    def predict(self, row):
        self.clock.now += self.cost_ms(int(row["request"].iloc[0]), self.calls) / 1000
        self.calls += 1


def test_the_latency_guard_reads_a_requests_own_cost_not_the_hosts_load(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(base, "time", clock)
    inputs = pd.DataFrame({"request": range(80)})

    # The host was busy through the whole first round (every request 200 ms) and again for one
    # request of the second; the model's own cost is 3 ms. One round read the load.
    def busy_then_quiet(request, call):
        return 200.0 if call < 50 or call == 57 else 3.0

    model = _TimedModel(clock, busy_then_quiet)
    assert base.latency_p95(model, inputs) == pytest.approx(3.0)
    assert model.calls == 150  # the first 50 requests, each timed three times
    assert base.latency_p95(_TimedModel(clock, busy_then_quiet), inputs, rounds=1) == pytest.approx(200.0)

    # One request in ten is slow every time it is asked (a long history): that is the model's own
    # tail, and the p95 keeps it.
    slow_tail = _TimedModel(clock, lambda request, call: 40.0 if request % 10 == 0 else 3.0)
    assert base.latency_p95(slow_tail, inputs) == pytest.approx(40.0)
    assert np.isnan(base.latency_p95(slow_tail, inputs.iloc[:0]))


def test_auc_is_bootstrapped_per_user_cluster():
    import pandas as pd

    from pipeline.lifecycle.gate import gate_rows

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(400), 5)  # five candidate rows per user
    labels = (rng.random(users.size) < 0.2).astype(float)
    informative = labels + rng.normal(0, 0.8, users.size)
    noise = rng.normal(0, 1, users.size)
    policy = Policy(metric="auc", bootstrap_samples=300)
    column, stat = gate_rows("purchase_propensity", "auc", pd.DataFrame({"label": labels}))
    assert column == "probability"
    good = decide(
        policy,
        {"auc": stat(informative, np.arange(users.size))},
        {},
        {"auc": stat(noise, np.arange(users.size))},
        "1",
        Rows(users, informative, stat, noise),
    )
    assert good.passed and good.interval[0] > 0
    same = decide(policy, {"auc": 0.5}, {}, {"auc": 0.5}, "1", Rows(users, noise, stat, noise))
    assert not same.passed


def test_the_gates_auc_is_sklearns_with_ties_and_repeated_rows():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = (rng.random(3000) < 0.05).astype(float)
    # Scores rounded to two decimals: many ties, within and across the classes.
    scores = np.round(labels * 0.3 + rng.random(labels.size), 2)
    rows = rng.integers(0, labels.size, labels.size)  # a bootstrap resample: rows drawn twice or more
    for at in (np.arange(labels.size), rows):
        assert base.auc(labels[at], scores[at]) == pytest.approx(roc_auc_score(labels[at], scores[at]), abs=1e-12)
    assert base.auc(labels, -scores) == pytest.approx(1 - base.auc(labels, scores), abs=1e-12)
    assert np.isnan(base.auc(np.zeros(5), np.arange(5.0)))
    assert np.isnan(base.auc(np.ones(5), np.arange(5.0)))
    assert np.isnan(base.auc(np.array([0.0, 1.0, np.nan]), np.arange(3.0)))  # a label missing: no AUC
    with pytest.raises(ValueError, match="1 of 3 scores are NaN or infinite"):
        base.auc(np.array([0.0, 1.0, 1.0]), np.array([0.1, np.nan, 0.3]))


def test_a_candidate_that_loses_to_a_floor_on_the_task_it_serves_is_refused():
    # Ahead of the floor on the gate's own rows, behind it on the online protocol run offline (per
    # session step: the next step), where the floor gets 30% more of the requests right.
    floor = _users(0)
    better = floor.copy()
    better[np.flatnonzero(floor == 0)[:150]] = 1.0
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(500), 4)
    floor_hits = (rng.random(users.size) < 0.5).astype(float)
    model_hits = np.where(rng.random(users.size) < 0.3, 0.0, floor_hits)
    policy = dataclasses.replace(_policy(), online_protocol=True)
    online = ("hit_rate_at_10", Rows(users, model_hits, MEAN, baselines={"popularity": floor_hits}))
    d = decide(
        policy,
        {"ndcg_at_20": better.mean()},
        {"popularity": floor.mean()},
        rows=_paired(better, floor=floor),
        online=online,
    )
    assert not d.passed and d.strongest_floor == "popularity"
    assert any(r.startswith("PASS floor popularity: ndcg_at_20") for r in d.reasons)
    assert any(r.startswith("FAIL floor popularity (online protocol): hit_rate_at_10") for r in d.reasons)
    assert d.floor_intervals["popularity (online protocol)"][1] < 0
    missing = decide(
        policy, {"ndcg_at_20": better.mean()}, {"popularity": floor.mean()}, rows=_paired(better, floor=floor)
    )
    assert (
        not missing.passed
        and "FAIL floor popularity (online protocol): no per-request values of the online protocol in the evaluation"
        in missing.reasons
    )
    assert _floor_case(better, floor).passed  # the same candidate, the online protocol not required


@pytest.mark.fast
def test_a_cheaper_candidate_that_catches_fewer_frauds_than_the_champion_is_refused():
    """A guard metric: cheaper on the gate's metric (lower is better), but its recall at the budget
    falls well below the champion's on the same orders: refused; with equal recall: promoted."""
    from pipeline.lifecycle.gate import mean_statistic

    rng = np.random.default_rng(1)
    orders = np.arange(3000)
    champion_cost = rng.gamma(2.0, 5.0, orders.size)
    cheaper = champion_cost * 0.8
    caught = (rng.random(orders.size) < 0.9).astype(float)  # per-order "caught" values, for the guard
    fewer = caught * (rng.random(orders.size) < 0.8)
    policy = Policy(metric="cost", higher_is_better=False, bootstrap_samples=300, guard_metrics=("recall",))

    def run(candidate_recall):
        return decide(
            policy,
            {"cost": cheaper.mean()},
            {},
            {"cost": champion_cost.mean()},
            "1",
            Rows(orders, cheaper, mean_statistic, champion_cost),
            guards={"recall": Rows(orders, candidate_recall, mean_statistic, caught, clusters="orders")},
        )

    refused = run(fewer)
    assert not refused.passed and "guard recall" in refused.summary() and "may be worse" in refused.summary()
    assert run(caught.copy()).passed
    # Without the guard's values the check fails rather than passing silently.
    missing = decide(
        policy,
        {"cost": cheaper.mean()},
        {},
        {"cost": champion_cost.mean()},
        "1",
        Rows(orders, cheaper, mean_statistic, champion_cost),
    )
    assert not missing.passed


def test_the_calibration_benchmark_counts_how_often_the_gate_favours_one_of_two_equal_models():
    from benchmarks.bench_gate_calibration import null_promotions, wilson

    # The candidate is better on every user as given. The benchmark mixes the two into two equally
    # good models, draws test sets of whole users from the rows, and gates each with the gate's
    # own decide: at confidence 0.5 the interval favours either side about a quarter of the time.
    rng = np.random.default_rng(3)
    champion = rng.random(400)
    rows = pd.DataFrame(
        {
            "user_id": np.arange(400).astype(str),
            "candidate.ndcg_at_20": champion + 0.05,
            "champion.ndcg_at_20": champion,
        }
    )
    policy = Policy(metric="ndcg_at_20", confidence=0.5, bootstrap_samples=200)
    r = null_promotions("next_item", rows, policy, replicates=150, seed=0)
    assert r["sides"] == "candidate, champion" and r["expected"] == 0.25 and r["clusters"] == 400
    assert r["gap"] < 1e-3  # the two mixtures' means on the rows
    assert 0.15 < r["rate"] < 0.35 and r["rate_low"] < 0.25 < r["rate_high"]
    assert r["daily_year"] == pytest.approx(1 - (1 - r["rate"]) ** 365)
    # Unmixed, this candidate would pass every time: the gate finds a real difference.
    assert decide(
        policy,
        {"ndcg_at_20": rows["candidate.ndcg_at_20"].mean()},
        {},
        champion={"ndcg_at_20": champion.mean()},
        rows=Rows(np.arange(400), rows["candidate.ndcg_at_20"].to_numpy(), MEAN, champion=champion),
    ).passed
    assert wilson(0, 10)[0] == 0.0 and wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # A floor's own run has the floor on both sides: no two models to compare, said, not counted.
    floor_run = rows.drop(columns="champion.ndcg_at_20").assign(**{"popularity.ndcg_at_20": champion + 0.05})
    with pytest.raises(ValueError, match="no side of the evaluation differs from the candidate"):
        null_promotions("next_item", floor_run, _policy(), replicates=1, seed=0)


def test_too_few_positive_labels_decide_nothing_and_leave_the_family_to_the_champion_or_the_strongest_floor():
    floor = _users(0)
    better = floor.copy()
    better[np.flatnonzero(floor == 0)[:300]] = 1.0  # clearly better than the floor and the champion
    policy = dataclasses.replace(_policy(), floors=("popularity",), min_positives=30)

    def gate(positives, champion=None):
        return decide(
            policy,
            {"ndcg_at_20": better.mean()},
            {"popularity": floor.mean()},
            champion=None if champion is None else {"ndcg_at_20": champion.mean()},
            champion_version=None if champion is None else "1",
            rows=Rows(np.arange(floor.size), better, MEAN, champion=champion, baselines={"popularity": floor}),
            positives=positives,
        )

    few = gate(8, champion=floor)
    assert not few.passed
    assert "FAIL evidence: 8 positive labels in the test rows (at least 30): too few to tell two models apart" in (
        " ".join(few.reasons)
    )
    assert any(r.startswith("PASS significance") for r in few.reasons)  # the interval alone would promote
    assert gate(30, champion=floor).passed
    assert not gate(None, champion=floor).passed  # no labels to count: no evidence
    # No champion: the strongest floor serves, as when the candidate fails a floor.
    first = gate(8)
    assert not first.passed and first.strongest_floor == "popularity"
    assert gate(30).passed and gate(30).strongest_floor is None
    # What the gate counts: 0/1 labels; a forecast's label (units sold) is no count of positives.
    assert positive_labels(pd.DataFrame({"label": [0.0, 1.0, 1.0, None]})) == 2
    assert positive_labels(pd.DataFrame({"label": [3.0, 1.0]})) is None
    assert positive_labels(pd.DataFrame({"user_id": ["a"]})) is None
    # The rule is off by default.
    assert not [r for r in decide(_policy(), {"ndcg_at_20": 1.0}, {"popularity": 0.0}).reasons if "evidence" in r]
