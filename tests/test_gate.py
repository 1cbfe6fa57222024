"""The promotion gate's rules on per-user values with known differences (no MLflow, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.lifecycle.gate import Policy, PolicyError, decide, load_policy

pytestmark = pytest.mark.fast


def MEAN(values, rows):
    return float(values.mean())


def _policy(**kw) -> Policy:
    return Policy(metric="ndcg_at_20", floors=("popularity",), bootstrap_samples=500, **kw)


def _paired(candidate: np.ndarray, champion: np.ndarray):
    return np.arange(candidate.size), candidate, champion, MEAN


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
    with pytest.raises(PolicyError, match=r"policy.yaml: next_item.min_improvment is not a policy rule"):
        load_policy("next_item", bad)
    bad.write_text("next_item:\n  metric: ndcg_at_20\n  confidence: 1.5\n")
    with pytest.raises(PolicyError, match=r"next_item.confidence must be in \[0.5, 1\), got 1.5"):
        load_policy("next_item", bad)
    with pytest.raises(PolicyError, match="no section for model 'purchase_propensity'"):
        load_policy("purchase_propensity", bad)


def test_a_clearly_better_candidate_is_promoted():
    champion = _users(0)
    candidate = champion.copy()
    candidate[np.flatnonzero(champion == 0)[:150]] = 1.0   # 150 more users get their item first
    d = decide(_policy(), {"ndcg_at_20": candidate.mean()}, {"popularity": 0.01},
               {"ndcg_at_20": champion.mean()}, "3", _paired(candidate, champion))
    assert d.passed, d.summary()
    assert d.interval[0] > 0 and d.champion_version == "3"


def test_a_worse_candidate_is_rejected():
    champion = _users(0)
    candidate = champion.copy()
    candidate[np.flatnonzero(champion > 0)[:60]] = 0.0
    d = decide(_policy(), {"ndcg_at_20": candidate.mean()}, {"popularity": 0.01},
               {"ndcg_at_20": champion.mean()}, "3", _paired(candidate, champion))
    assert not d.passed
    assert any(r.startswith("FAIL improvement") for r in d.reasons)


def test_a_noisy_equal_candidate_is_rejected_as_not_significant():
    # Two draws of the same distribution; pick a pair where the candidate happens to be ahead.
    champion = _users(0)
    candidate = next(c for c in (_users(s) for s in range(1, 50)) if c.mean() > champion.mean())
    d = decide(_policy(), {"ndcg_at_20": candidate.mean()}, {"popularity": 0.01},
               {"ndcg_at_20": champion.mean()}, "3", _paired(candidate, champion))
    assert not d.passed
    assert any(r.startswith("PASS improvement") for r in d.reasons)  # ahead on the point estimate...
    assert any(r.startswith("FAIL significance") and "not significantly better" in r for r in d.reasons)


def test_the_first_model_passes_only_if_it_beats_the_floors():
    above = decide(_policy(), {"ndcg_at_20": 0.08}, {"popularity": 0.05})
    below = decide(_policy(), {"ndcg_at_20": 0.04}, {"popularity": 0.05})
    assert above.passed and not below.passed
    assert "FAIL floor popularity: ndcg_at_20 0.0400 vs popularity 0.0500" in below.reasons


def test_guards_on_latency_and_size_reject_a_model_that_beats_everything():
    d = decide(_policy(max_latency_ms=50, max_model_mb=10), {"ndcg_at_20": 0.08}, {"popularity": 0.05},
               latency_ms=80.0, model_mb=4.0)
    assert not d.passed
    assert "FAIL latency: p95 80.0 ms (limit 50 ms)" in d.reasons and "PASS size: 4.0 MB (limit 10 MB)" in d.reasons


def test_auc_is_bootstrapped_over_users_not_rows():
    from pipeline.lifecycle.gate import _statistic

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(400), 5)                        # five candidate rows per user
    labels = (rng.random(users.size) < 0.2).astype(float)
    informative = labels + rng.normal(0, 0.8, users.size)
    noise = rng.normal(0, 1, users.size)
    policy = Policy(metric="auc", bootstrap_samples=300)
    stat = _statistic(policy, labels)
    good = decide(policy, {"auc": stat(informative, np.arange(users.size))}, {},
                  {"auc": stat(noise, np.arange(users.size))}, "1", (users, informative, noise, stat))
    assert good.passed and good.interval[0] > 0
    same = decide(policy, {"auc": 0.5}, {}, {"auc": 0.5}, "1", (users, noise, noise, stat))
    assert not same.passed
