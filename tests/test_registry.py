"""The promotion gate and the MLflow registry: who becomes champion, and why.

The gate's rules are tested on per-user values with known differences; the registry on real
models trained on the synthetic shop, evaluated, gated and registered in a real MLflow store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, published_shop
from pipeline.lifecycle.gate import Policy, PolicyError, decide, load_policy


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
    assert "logistic_regression" in load_policy("purchase_propensity").floors
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


# The registry, on real models ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A published shop and four trained recommender runs: untrained (random), good, good again
    (same data, same seed) and untrained again."""
    from pipeline.core.params import GenerateParams, TrainRecommenderParams
    from pipeline.families.next_item.train import train as train_recommender

    with published_shop(tmp_path_factory.mktemp("registry"), GenerateParams(
            seed=11, start_date="2026-10-01", days=10, events_per_day=5000, initial_users=2000,
            initial_items=1200)) as paths:
        good = TrainRecommenderParams(max_len=20, dim=32, layers=1, epochs=6, patience=2)
        untrained = dataclasses.replace(good, lr=0.0, epochs=1)   # scores at random
        runs = {
            "untrained": train_recommender(paths, untrained).run_id,
            "good": train_recommender(paths, good).run_id,
            "good_again": train_recommender(paths, good).run_id,   # same data, same seed
            "untrained_again": train_recommender(paths, dataclasses.replace(untrained, seed=1)).run_id,
        }
        yield paths, runs


def test_lifecycle_reject_promote_keep_rollback_and_lineage(shop):
    import mlflow

    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle import registry, steps

    paths, runs = shop
    policy = dataclasses.replace(load_policy("next_item"), bootstrap_samples=500)
    client = mlflow_client(paths)

    def champion():
        mv = registry.alias_version(client, "next_item", registry.CHAMPION)
        return str(mv.version) if mv else None

    # The first model, scoring at random, does not beat popularity: registered, rejected, no champion.
    first = steps.after_training(paths, "next_item", {"run_id": runs["untrained"]}, policy)
    assert "champion" not in first and first["version"] == "1"
    assert any(r.startswith("FAIL floor popularity") for r in first["reasons"])
    assert champion() is None
    assert registry.alias_version(client, "next_item", registry.CHALLENGER) is None
    v1 = client.get_model_version("next_item", "1")
    assert v1.tags["status"] == "rejected" and "FAIL floor popularity" in v1.tags["gate.reasons"]
    with pytest.raises(registry.RegistryError, match="rejected by the gate"):
        registry.promote(paths, "next_item", "1")
    registry.promote(paths, "next_item", "1", force=True, by="alice", reason="seed the registry")
    assert champion() == "1"

    # A trained model against the random champion: significantly better, promoted.
    better = steps.after_training(paths, "next_item", {"run_id": runs["good"]}, policy)
    assert better.get("champion") == "2", better["reasons"]
    assert any(r.startswith("PASS significance") for r in better["reasons"])
    assert champion() == "2"
    artifacts = {a.path for a in client.list_artifacts(runs["good"], "evaluation")}
    assert {"evaluation/summary.json", "evaluation/rows.parquet", "evaluation/decision.json",
            "evaluation/ndcg_at_20_by_slice.png"} <= artifacts
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{runs['good']}/evaluation/summary.json"))
    assert summary["champion_version"] == "1"
    assert {"user_type=new", "user_type=returning", "price_band=low"} <= set(summary["candidate"]["slices"])
    assert 0 < summary["candidate"]["metrics"]["coverage_at_20"] <= 1

    # The same training again: equal, not significantly better; registered as rejected.
    equal = steps.after_training(paths, "next_item", {"run_id": runs["good_again"]}, policy)
    assert "champion" not in equal and champion() == "2"
    assert any("not significantly better" in r for r in equal["reasons"])
    # Registering the same run again (a retried task) returns the same version.
    assert str(registry.register_candidate(paths, "next_item", runs["good_again"]).version) == equal["version"]

    # A worse model: rejected on the improvement rule.
    worse = steps.after_training(paths, "next_item", {"run_id": runs["untrained_again"]}, policy)
    assert "champion" not in worse and champion() == "2"
    assert any(r.startswith("FAIL improvement") for r in worse["reasons"])

    # Rollback restores the previous champion and records who and why.
    registry.rollback(paths, "next_item", by="bob", reason="conversion dropped after the release")
    assert champion() == "1"
    history = json.loads(client.get_registered_model("next_item").tags[registry.HISTORY_TAG])
    assert history[-1] == {**history[-1], "action": "rollback", "version": "1", "previous": "2", "by": "bob",
                           "reason": "conversion dropped after the release"}
    assert client.get_model_version("next_item", "2").tags["status"] == "rolled_back"
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(paths, "next_item", reason="again")

    # Lineage: from a version back to the DVC dataset hash and the commit.
    trace = registry.lineage(paths, "next_item", version="2")
    current = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())
    assert trace["dataset_version"] == current["version"]
    assert (paths.dataset_repo / "versions" / f"{trace['dataset_version']}.json").exists()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert trace["git_commit"].removesuffix("-dirty") == head
    assert trace["run_id"] == runs["good"] and trace["gate_decision"] == "passed"
    assert trace["evaluated_against"] == "1" and "eval_ndcg_at_20" in trace["metrics"]


def _passed_versions(paths, runs) -> list[str]:
    """The versions of the two trained runs, marked as passed by the gate and the smoke test (also when
    a test runs on its own)."""
    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle import registry

    client = mlflow_client(paths)
    for key in ("good", "good_again"):
        if "gate.decision" not in client.get_run(runs[key]).data.tags:
            client.set_tag(runs[key], "gate.decision", "passed")
    versions = [str(registry.register_candidate(paths, "next_item", runs[k]).version) for k in ("good", "good_again")]
    for v in versions:
        client.set_model_version_tag("next_item", v, "gate.decision", "passed")
        client.set_model_version_tag("next_item", v, "smoke_test", "passed")  # tests/test_serving.py packages
    return versions


RACER = """
import os, sys, time
from pipeline.lifecycle import registry
from pipeline.core.settings import get_state_paths
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    registry.promote(get_state_paths(), "next_item", sys.argv[1], expected_champion=sys.argv[3])
    print("PROMOTED")
except registry.ChampionMoved as exc:
    print("REFUSED", exc)
"""


def test_two_racing_promotions_leave_exactly_one_champion(shop, tmp_path):
    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle import registry

    paths, runs = shop
    client = mlflow_client(paths)
    # Two versions that passed a gate against the same champion, promoted at the same moment.
    contenders = _passed_versions(paths, runs)
    champion = registry.alias_version(client, "next_item", registry.CHAMPION)
    current = str(champion.version) if champion else registry.NO_CHAMPION
    assert current not in contenders
    go = tmp_path / "go"
    env = {**os.environ, "SHOPML_HOME": str(paths.home)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, v, str(go), current], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in contenders]
    time.sleep(3)  # both are importing and waiting
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert sorted(o.split()[0] for o in outputs) == ["PROMOTED", "REFUSED"], outputs
    winner = contenders[[o.startswith("PROMOTED") for o in outputs].index(True)]
    assert str(registry.alias_version(client, "next_item", registry.CHAMPION).version) == winner
    assert "evaluate it again" in next(o for o in outputs if o.startswith("REFUSED"))


@pytest.mark.slow  # a minute of `airflow dags test`: make test-slow, which CI runs too
def test_promote_and_rollback_through_their_dags(shop):
    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle import registry

    paths, runs = shop
    client = mlflow_client(paths)
    champion = registry.alias_version(client, "next_item", registry.CHAMPION)
    before = str(champion.version) if champion else None
    target = next(v for v in _passed_versions(paths, runs) if v != before)
    env = {**os.environ, "SHOPML_HOME": str(paths.home)}

    def dag(dag_id: str, conf: dict) -> str:
        out = subprocess.run([sys.executable, "-m", "pipeline", "airflow", "dags", "test", dag_id, "--conf",
                              json.dumps(conf)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        return out.stdout + out.stderr

    log = dag("promote_model", {"model": "next_item", "version": target, "reason": "manual release"})
    assert f"next_item: champion is now version {target} (manual release)" in log
    assert str(registry.alias_version(client, "next_item", registry.CHAMPION).version) == target
    if before is not None:
        log = dag("rollback_model", {"model": "next_item", "reason": "checkout errors"})
        assert f"next_item: champion is back to version {before} (checkout errors)" in log
        assert str(registry.alias_version(client, "next_item", registry.CHAMPION).version) == before
        history = json.loads(client.get_registered_model("next_item").tags[registry.HISTORY_TAG])
        assert history[-1]["action"] == "rollback" and history[-1]["reason"] == "checkout errors"
