"""Serving: Bentos built from registry versions, tested against real ``bentoml serve`` processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from conftest import REPO, published_shop, wait_http
from pipeline.core.tracking import alias_version, mlflow_client
from pipeline.data.predictions import read_predictions
from pipeline.families.purchase_propensity.features import (
    PROPENSITY_DENSE,
    assemble_propensity,
    propensity_rows,
    propensity_tables,
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A published shop; a trained and a random recommender and a propensity model, all evaluated,
    gated and registered (nothing packaged yet)."""
    from pipeline.core.params import GenerateParams, TrainPropensityParams, TrainRecommenderParams
    from pipeline.families.next_item.train import train as train_recommender
    from pipeline.families.purchase_propensity.train import train as train_propensity
    from pipeline.lifecycle import registry
    from pipeline.lifecycle.evaluate import evaluate_candidate
    from pipeline.lifecycle.gate import gate_candidate, load_policy

    with published_shop(
        tmp_path_factory.mktemp("serving"),
        GenerateParams(
            seed=11, start_date="2026-10-01", days=10, events_per_day=5000, initial_users=2000, initial_items=1200
        ),
    ) as paths:
        good = TrainRecommenderParams(max_len=20, dim=32, layers=1, epochs=6, patience=2)
        runs = {
            "good": train_recommender(paths, good).run_id,
            "random": train_recommender(paths, dataclasses.replace(good, lr=0.0, epochs=1, blend=False)).run_id,
            "propensity": train_propensity(paths, TrainPropensityParams(epochs=3)).run_id,
        }
        versions = {}
        for key, model in (("good", "next_item"), ("random", "next_item"), ("propensity", "purchase_propensity")):
            # These tests are about serving: the small trained models pass a gate without floors (the
            # floors' intervals are tested in tests/test_gate.py and the registry flow in
            # tests/test_registry.py); the random recommender still faces the popularity floor and is rejected.
            policy = dataclasses.replace(
                load_policy(model),
                bootstrap_samples=200,
                online_protocol=False,
                floors=("popularity",) if key == "random" else (),
            )
            evaluate_candidate(paths, model, runs[key])
            gate_candidate(paths, model, runs[key], policy)
            versions[key] = str(registry.register_candidate(paths, model, runs[key]).version)
        yield paths, runs, versions


def test_a_skewed_snapshot_fails_the_parity_check_by_user_id_and_promotion(shop, monkeypatch):
    """One user's history altered in the feature snapshot: the replayed histories still agree, but
    the requests by user id disagree with the offline features, so the version is not promotable.

    First in this module: it needs the trained version not yet packaged nor champion."""
    import shutil

    import bentoml

    from pipeline import families
    from pipeline.data.dataset import SEQUENCE_EVENT_TYPES
    from pipeline.data.version import open_dataset
    from pipeline.families.base import parity_users
    from pipeline.lifecycle import registry
    from pipeline.serving import package as packaging
    from pipeline.serving.package import ParityError

    paths, runs, versions = shop
    client = mlflow_client(paths)
    assert alias_version(client, "next_item", "champion") is None
    dataset_version = client.get_run(runs["good"]).data.tags["dataset_version"]
    packaging.use_bento_home(paths)
    real_tag, full_version = packaging._snapshot(paths, families.get("next_item"), dataset_version)
    events = open_dataset(paths, full_version).events().filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
    requests = 40
    real = Path(bentoml.models.get(real_tag).path)
    histories = pl.read_parquet(real / "histories.parquet")
    sampled = set(parity_users(events["user_id"].unique().to_list(), requests))
    victim = histories.filter(pl.col("user_id").is_in(sampled) & (pl.col("items").list.n_unique() >= 3))["user_id"][0]
    skewed_tag = "shopml-features-next-item:skewed-one-user"
    with bentoml.models.create(skewed_tag) as model:
        shutil.copytree(real, model.path, dirs_exist_ok=True)
        histories.with_columns(
            pl.when(pl.col("user_id") == victim)
            .then(pl.col("items").list.reverse())
            .otherwise(pl.col("items"))
            .alias("items")
        ).write_parquet(Path(model.path) / "histories.parquet")
    monkeypatch.setattr(packaging, "_snapshot", lambda paths, spec, version: (skewed_tag, full_version))

    with pytest.raises(ParityError, match=rf"answers to 80 requests by user id differ .*user_id {victim}"):
        packaging.package(paths, "next_item", versions["good"], requests=requests)
    mv = client.get_model_version("next_item", versions["good"])
    assert mv.tags["smoke_test"] == "failed" and "snapshot or the packaged user states" in mv.tags["smoke_test.reason"]
    with pytest.raises(registry.RegistryError, match="its smoke test failed"):
        registry.promote(paths, "next_item", versions["good"])


@pytest.fixture(scope="module")
def next_item_bento(shop):
    """The trained recommender packaged (built, served, parity-checked) and promoted."""
    from pipeline.lifecycle import registry
    from pipeline.serving.package import package

    paths, _, versions = shop
    # Not promotable before a passed smoke test (the skewed-snapshot test above failed one).
    with pytest.raises(registry.RegistryError, match=r"never packaged and smoke-tested|its smoke test failed"):
        registry.promote(paths, "next_item", versions["good"])
    packaged = package(paths, "next_item", versions["good"], requests=100)
    registry.promote(paths, "next_item", versions["good"])
    return packaged


@pytest.fixture(scope="module")
def next_item_url(shop, next_item_bento):
    """`python -m pipeline serve` of the champion: the command `make demo` prints."""
    from pipeline.serving.package import free_port

    paths = shop[0]
    port = free_port()
    env = {**os.environ, "SHOPML_HOME": str(paths.home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model", "next_item", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Its output is read only once it exited: a pipe of a live process would block.
        wait_http(f"{url}/readyz", proc, lambda: proc.stdout.read().decode() if proc.poll() is not None else "")
        # Nobody in without a key: the first `shopml serve` made an admin key and printed it once.
        printed = [proc.stdout.readline().decode() for _ in range(3)]
        key = next((line.strip() for line in printed if line.startswith("shopml_")), None)
        assert key, printed
        assert httpx.post(f"{url}/recommend", json={"user_id": "u1"}, timeout=30).status_code == 401
        KEYS["authorization"] = f"Bearer {key}"
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def propensity_url(shop):
    from pipeline.serving.package import build_bento, served

    paths, _, versions = shop
    bento = build_bento(paths, "purchase_propensity", versions["propensity"])
    with served(paths, bento.bento_tag) as url:
        yield url


KEYS: dict[str, str] = {}  # the admin key `shopml serve` printed (next_item_url), sent by _post


def _post(url: str, body) -> httpx.Response:
    return httpx.post(url, json=body, timeout=30, headers=KEYS)


def _snapshot_user(paths) -> tuple[str, list[str], list[str]]:
    """A user with a history and at least one purchase, from the published data."""
    from pipeline.data.dataset import latest_catalog, load_events
    from pipeline.families.next_item.features import user_histories

    events = load_events(paths.canonical)
    assert latest_catalog(paths.canonical).height > 0
    histories = user_histories(events, 50).filter(pl.col("purchased").list.len() > 0)
    row = histories.row(0, named=True)
    return row["user_id"], row["items"], row["purchased"]


def test_recommend_serves_known_users_histories_and_cold_starts(shop, next_item_url):
    paths = shop[0]
    user, history, purchased = _snapshot_user(paths)
    known = _post(f"{next_item_url}/recommend", {"user_id": user, "k": 10}).json()
    assert known["user_known"] and known["source"] == "model" and len(known["items"]) == 10
    assert known["scores"] == sorted(known["scores"], reverse=True)
    # The same user given as their history answers the same.
    same = _post(f"{next_item_url}/recommend", {"history": history, "k": 10}).json()
    assert same["items"] == known["items"] and not same["user_known"]

    # Exclusions: what they bought, and items out of stock.
    excluded = known["items"][:3]
    filtered = _post(
        f"{next_item_url}/recommend", {"user_id": user, "k": 10, "exclude": excluded, "exclude_purchased": True}
    ).json()
    assert len(filtered["items"]) == 10
    assert not set(filtered["items"]) & (set(excluded) | set(purchased))
    assert [i for i in known["items"] if i not in excluded and i not in purchased] == filtered["items"][
        : len([i for i in known["items"] if i not in excluded and i not in purchased])
    ]

    cold = _post(f"{next_item_url}/recommend", {"user_id": "someone-new", "k": 5}).json()
    assert cold["source"] == "popularity" and not cold["user_known"] and len(cold["items"]) == 5
    unknown_items = _post(f"{next_item_url}/recommend", {"history": ["no-such-item"], "k": 5}).json()
    assert unknown_items["source"] == "popularity" and unknown_items["items"] == cold["items"]


def test_metadata_health_and_bad_requests(shop, next_item_bento, next_item_url):
    _, runs, versions = shop
    meta = _post(f"{next_item_url}/metadata", {}).json()
    assert meta["model"] == "next_item" and meta["version"] == versions["good"]
    assert meta["bento_tag"] == next_item_bento.bento_tag and meta["run_id"] == runs["good"]
    assert len(meta["dataset_version"]) == 32 and meta["git_commit"]
    assert httpx.get(f"{next_item_url}/readyz").status_code == 200
    assert httpx.get(f"{next_item_url}/livez").status_code == 200

    for body, field in (
        ({"k": 5, "colour": "red"}, "colour"),
        ({"k": 0}, "k"),
        ({"k": 101}, "k"),
        ({"k": "5"}, "k"),
        ({"history": "i1"}, "history"),
        ({"history": [1, 2]}, "history"),
        ({"exclude_purchased": "yes"}, "exclude_purchased"),
        ({"history": ["i1"] * 201}, "history"),
    ):
        r = _post(f"{next_item_url}/recommend", body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert field in {str(loc) for d in r.json()["detail"] for loc in d["loc"]}, (body, r.text)
    broken = httpx.post(
        f"{next_item_url}/recommend",
        content=b"{not json",
        timeout=30,
        headers={"content-type": "application/json", **KEYS},
    )
    assert broken.status_code == 400 and "Invalid JSON" in broken.text


def test_shadow_and_canary_serve_a_challenger_beside_the_champion_and_promotion_waits_for_online_evidence(
    shop, next_item_bento, tmp_path, monkeypatch
):
    """Shadow: the champion's answers are returned, the challenger's logged beside them. Canary: a
    configured share of users, always the same ones, get the challenger. A challenger that passed
    the offline gate is not promoted before the online gate, and the online gate finds the random
    challenger worse than the champion on the same requests."""
    import yaml

    from pipeline.data.dataset import SEQUENCE_EVENT_TYPES
    from pipeline.data.version import open_dataset
    from pipeline.families.next_item.monitoring import outcomes
    from pipeline.lifecycle import monitor as monitoring
    from pipeline.lifecycle import registry
    from pipeline.serving.package import build_bento, served

    paths, _, versions = shop
    challenger = build_bento(paths, "next_item", versions["random"])
    root = tmp_path / "predictions"
    events = open_dataset(paths).events().filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
    last_day = events["event_time"].max().date()
    # Each user's first step of the last day: the request time, so that what they did next is known.
    firsts = (
        events.filter(pl.col("event_time").dt.date() == last_day)
        .sort("event_time")
        .group_by("user_id", maintain_order=True)
        .first()
        .head(240)
    )
    env = {
        "SHOPML_PREDICTION_LOG": str(root),
        "SHOPML_PREDICTION_LOG_FLUSH_S": "1",
        "SHOPML_ACCEPT_EVENT_TIME": "1",
        "SHOPML_CHALLENGER_BENTO": challenger.bento_tag,
    }
    with served(paths, next_item_bento.bento_tag, env={**env, "SHOPML_CHALLENGER_MODE": "shadow"}) as url:
        meta = _post(f"{url}/metadata", {}).json()
        assert meta["challenger"] == {
            "version": versions["random"],
            "bento_tag": challenger.bento_tag,
            "mode": "shadow",
            "share": None,
            "shadow_failures": 0,
        }
        for user, at in firsts.select("user_id", "event_time").iter_rows():
            answer = httpx.post(
                f"{url}/recommend",
                json={"user_id": user, "k": 10},
                timeout=30,
                headers={"x-shopml-event-time": at.isoformat(), "x-request-id": f"shadow-{user}"},
            )
            assert answer.status_code == 200 and answer.json()["model_version"] == versions["good"]
        time.sleep(3)
        assert "shopml_prediction_log_dropped_total" in httpx.get(f"{url}/metrics").text
    logged = read_predictions(str(root), "next_item", last_day)
    by_role = {role: part for (role,), part in logged.group_by("role")}
    assert set(by_role) == {"champion", "shadow"} and by_role["shadow"].height == firsts.height
    assert set(by_role["shadow"]["model_version"]) == {versions["random"]}
    assert set(by_role["shadow"]["request_id"]) == set(by_role["champion"]["request_id"])
    # The pairs are the server's ids; the client's x-request-id is kept beside them, never as the key.
    assert not set(by_role["champion"]["request_id"]) & {f"shadow-{u}" for u in firsts["user_id"]}
    assert set(by_role["champion"]["client_request_id"]) == {f"shadow-{u}" for u in firsts["user_id"]}

    with served(
        paths, next_item_bento.bento_tag, env={**env, "SHOPML_CHALLENGER_MODE": "canary", "SHOPML_CANARY_SHARE": "0.5"}
    ) as url:
        users = firsts["user_id"].to_list()
        served_by = {u: _post(f"{url}/recommend", {"user_id": u, "k": 5}).json()["model_version"] for u in users}
        share = np.mean([v == versions["random"] for v in served_by.values()])
        assert 0.35 < share < 0.65, share
        assert all(
            _post(f"{url}/recommend", {"user_id": u, "k": 5}).json()["model_version"] == served_by[u]
            for u in users[:40]
        )  # sticky by user

    # Suppose the random version had passed the offline gate and its smoke test: promotion still waits.
    client = mlflow_client(paths)
    for key, value in (("gate.decision", "passed"), ("smoke_test", "passed")):
        client.set_model_version_tag("next_item", versions["random"], key, value)
    policy_file = tmp_path / "policy.yaml"
    policy = yaml.safe_load((REPO / "policy.yaml").read_text())
    policy["monitoring"]["next_item"].update(require_online_evidence=True, online_min_users=100)
    policy_file.write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("SHOPML_POLICY", str(policy_file))
    with pytest.raises(registry.RegistryError, match=r"waits for online evidence .*not been served beside"):
        registry.promote(paths, "next_item", versions["random"])
    day = last_day.isoformat()
    folder = paths.home / "reports" / "monitoring" / "next_item" / day
    folder.mkdir(parents=True, exist_ok=True)
    outcomes(logged, open_dataset(paths).events(), monitoring.load_monitoring_policy("next_item")).write_parquet(
        folder / "outcomes.parquet"
    )
    # The online gate reads judged days only (``monitor`` marks a day judged once the data reaches its
    # horizon past it). The requests here are each user's first step of the day, whose next steps the
    # same day's data holds; the summary records the day as judged, as ``monitor`` would the day after.
    (folder / "summary.json").write_text(json.dumps({"judged": True}))
    gate = monitoring.online_gate(paths, "next_item", versions["random"], [day])
    assert gate.mode == "shadow" and not gate.passed and gate.interval[1] < 0, gate.line()
    with pytest.raises(registry.RegistryError, match="significantly worse"):
        registry.promote(paths, "next_item", versions["random"])
    for key in ("gate.decision", "smoke_test"):
        client.delete_model_version_tag("next_item", versions["random"], key)


def test_purchase_probability_by_user_id_and_by_features(shop, propensity_url):
    import mlflow

    from pipeline.families.next_item.features import user_histories

    paths, _, versions = shop
    from pipeline.data.dataset import load_events

    pairs = (
        user_histories(load_events(paths.canonical), 50)
        .head(20)
        .select("user_id", pl.col("items").list.last().alias("item_id"))
        .filter(pl.col("item_id").is_not_null())
    )
    candidates = [{"user_id": u, "item_id": i} for u, i in pairs.iter_rows()] + [
        {"user_id": "someone-new", "item_id": "no-such-item"}
    ]
    answer = _post(f"{propensity_url}/purchase_probability", {"candidates": candidates})
    assert answer.status_code == 200, answer.text
    probs = answer.json()["probabilities"]
    assert len(probs) == len(candidates) and all(0 < p < 1 for p in probs)
    assert answer.json()["model_version"] == versions["propensity"]

    # By user id, the service computes the features training computes; the registry model agrees.
    from pipeline.families.purchase_propensity.serving import propensity_inputs, snapshot_tables
    from pipeline.serving.snapshot import FeatureSnapshot, write_snapshot

    snapshot_dir = paths.home / "snapshot-check"
    write_snapshot(snapshot_tables, paths.canonical, "check", snapshot_dir)
    inputs = propensity_inputs(
        FeatureSnapshot.load(snapshot_dir), [c["user_id"] for c in candidates], [c["item_id"] for c in candidates]
    )
    model = mlflow.pyfunc.load_model(f"models:/purchase_propensity/{versions['propensity']}")
    expected = model.predict(inputs.to_pandas())["probability"].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)

    # A caller with its own feature store sends the features.
    row = inputs.row(0, named=True)
    sent = _post(
        f"{propensity_url}/purchase_probability",
        {"candidates": [{"item_id": row["item_id"], "features": {f: row[f] for f in PROPENSITY_DENSE}}]},
    ).json()
    assert sent["probabilities"][0] == pytest.approx(probs[0], abs=1e-6)

    too_many = _post(
        f"{propensity_url}/purchase_probability", {"candidates": [{"user_id": "u1", "item_id": "i1"}] * 1001}
    )
    assert too_many.status_code == 400 and "candidates" in too_many.text
    for bad in (
        {"candidates": []},
        {"candidates": [{"item_id": "i1"}]},
        {"candidates": [{"item_id": "i1", "features": {"price": 1.0}}]},
        {"candidates": [{"user_id": "u1", "item_id": "i1", "score": 3}]},
    ):
        r = _post(f"{propensity_url}/purchase_probability", bad)
        assert r.status_code == 400, (bad, r.text)
    assert (
        "missing"
        in _post(
            f"{propensity_url}/purchase_probability", {"candidates": [{"item_id": "i1", "features": {"price": 1.0}}]}
        ).text
    )


def test_propensity_packaging_replays_requests_by_user_id(shop):
    """The propensity Bento's smoke test also compares candidates looked up by user id in the
    snapshot with the training code path's features for the same pairs."""
    from pipeline.serving.package import package

    paths, _, versions = shop
    packaged = package(paths, "purchase_propensity", versions["propensity"], requests=50)
    by_user = [c for c in packaged.smoke.checks if c.startswith("parity by user id: ")]
    assert by_user and "10 requests" in by_user[0], packaged.smoke.checks
    mv = mlflow_client(paths).get_model_version("purchase_propensity", versions["propensity"])
    assert mv.tags["smoke_test"] == "passed"


def test_parity_check_fails_when_the_packaged_model_is_not_the_evaluated_one(shop, next_item_bento):
    import shutil

    import bentoml

    from pipeline.serving.package import ParityError, build_bento, smoke_test

    paths, _, versions = shop
    impostor = build_bento(paths, "next_item", versions["random"])
    # The random version's Bento, its weights swapped for the trained model's in the Bento store:
    # it says it is the random version, and answers like another model.
    weights = sorted(Path(bentoml.models.get(impostor.model_tag).path).rglob("best.pt"))
    trained = sorted(Path(bentoml.models.get(next_item_bento.model_tag).path).rglob("best.pt"))
    assert len(weights) == len(trained) == 1
    shutil.copyfile(trained[0], weights[0])
    # The files no longer have the digest packaging recorded: the service does not load them.
    with pytest.raises(Exception, match="changed after training"):
        smoke_test(paths, "next_item", versions["random"], impostor.bento_tag, requests=50)
    # Whoever can rewrite the store can rewrite the digest beside the files too; the parity check
    # against the evaluated model still catches the swap.
    import yaml

    from pipeline.core.integrity import tree_digest

    stored = Path(bentoml.models.get(impostor.model_tag).path)
    info = yaml.safe_load((stored / "model.yaml").read_text())
    info["metadata"]["model_sha256"] = tree_digest(stored / "mlflow_model")
    (stored / "model.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    with pytest.raises(ParityError, match=r"of 50 served answers differ from next_item version"):
        smoke_test(paths, "next_item", versions["random"], impostor.bento_tag, requests=50)


def test_packaging_is_recorded_on_the_version_and_lineage_finds_it(shop, next_item_bento):
    import json

    from pipeline.lifecycle import registry
    from pipeline.serving.package import build_bento, resolve_bento

    paths, runs, versions = shop
    mv = mlflow_client(paths).get_model_version("next_item", versions["good"])
    assert mv.tags["bento_tag"] == next_item_bento.bento_tag and mv.tags["smoke_test"] == "passed"
    report = json.loads(mv.tags["smoke_test.report"])
    assert report["mismatches"] == 0 and report["requests"] == 100
    assert any(c.startswith("parity by user id: 200 requests") for c in report["checks"]), report["checks"]
    assert resolve_bento(paths, "next_item") == next_item_bento.bento_tag  # the champion's
    assert registry.lineage(paths, "next_item", bento_tag=next_item_bento.bento_tag)["run_id"] == runs["good"]
    # Packaging again (a retried task) reuses the Bento.
    assert build_bento(paths, "next_item", versions["good"]).bento_tag == next_item_bento.bento_tag
    # The container installs every package by the lock's hashes (pip's hash-checking mode).
    import re

    import bentoml

    text = Path(bentoml.get(next_item_bento.bento_tag).path_of("env/python/requirements.txt")).read_text()
    blocks = [b for b in re.split(r"\n(?=\S)", text) if b.strip() and not b.startswith("#")]
    unhashed = [b.splitlines()[0] for b in blocks if not re.match(r"\S+==\S+", b) or "--hash=sha256:" not in b]
    assert blocks and not unhashed, unhashed
    assert {"torch", "bentoml", "mlflow", "s3fs"} <= {re.split(r"[=; ]", b, maxsplit=1)[0] for b in blocks}
    # Its image sets the project's process defaults (MLflow's telemetry off), which its code cannot
    # set before the service's imports load mlflow.
    envs = {e.name: e.value for e in bentoml.get(next_item_bento.bento_tag).info.envs}
    assert envs.get("MLFLOW_DISABLE_TELEMETRY") == "true", envs


def _random_events(
    rng, n: int, t0, hours_before: tuple[float, float], users: int, sessions: int, items: int
) -> pl.DataFrame:
    """``n`` canonical events drawn at random, ``hours_before`` t0 (a negative bound: after it)."""
    return pl.DataFrame(
        {
            "event_time": [t0 - timedelta(hours=float(h)) for h in rng.uniform(*hours_before, n)],
            "user_id": [f"u{k}" for k in rng.integers(0, users, n)],
            "session_id": [f"s{k}" for k in rng.integers(0, sessions, n)],
            "item_id": [f"i{k}" for k in rng.integers(0, items, n)],
            "event_type": rng.choice(["view", "add_to_cart", "remove_from_cart", "purchase"], n).tolist(),
            "price": rng.uniform(1, 50, n),
            "quantity": np.ones(n, dtype=np.int64),
        }
    ).with_columns(pl.col("event_time").dt.replace_time_zone("UTC"))


@pytest.mark.fast
def test_snapshot_features_are_the_training_features():
    """The serving snapshot assembles a candidate's row exactly as propensity_rows does at a cutoff."""
    from datetime import datetime, timezone

    t0 = datetime(2026, 11, 10, tzinfo=timezone.utc)
    rng = np.random.default_rng(0)
    n = 2000
    events = _random_events(rng, n, t0, (-48, 24 * 6), users=40, sessions=300, items=60)
    catalog = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(55)],
            "category": [f"c{k % 7}" for k in range(55)],
            "brand": [f"b{k % 4}" for k in range(55)],
            "price": np.linspace(2, 40, 55),
        }
    )
    rows = propensity_rows(events, catalog, t0, timedelta(days=2), timedelta(days=3))
    tables = propensity_tables(events.filter(pl.col("event_time") < t0), catalog, t0)  # everyone, as served
    served = assemble_propensity(rows.select("user_id", "item_id"), tables)
    columns = ["user_id", "item_id", "category", "brand", *PROPENSITY_DENSE]
    assert rows.height > 100
    assert served.select(columns).equals(rows.select(columns))


@pytest.mark.fast
def test_snapshot_lookups_by_sorted_key_equal_joins_on_whole_tables(tmp_path):
    """What the service assembles from its indexed snapshot tables (RowIndex) is what the joins on
    the whole tables give: known and unknown users and items, an item with no category, repeats."""
    from datetime import datetime, timezone

    from pipeline.families.purchase_propensity.serving import propensity_inputs, snapshot_tables
    from pipeline.serving.snapshot import FeatureSnapshot, write_snapshot_of

    t0 = datetime(2026, 11, 10, tzinfo=timezone.utc)
    rng = np.random.default_rng(1)
    n = 3000
    events = _random_events(rng, n, t0, (1, 24 * 6), users=80, sessions=400, items=90)
    catalog = pl.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(85)],
            "category": [None if k == 3 else f"c{k % 9}" for k in range(85)],
            "brand": [f"b{k % 5}" for k in range(85)],
            "price": np.linspace(2, 40, 85),
        }
    )
    write_snapshot_of(snapshot_tables, events, catalog, "v", tmp_path)
    snapshot = FeatureSnapshot.load(tmp_path)
    users = [f"u{k}" for k in rng.integers(0, 90, 600)] + ["nobody", "u1", "u1"]
    items = [f"i{k}" for k in rng.integers(0, 95, 600)] + ["i1", "nothing", "i3"]
    served = propensity_inputs(snapshot, users, items)
    whole = assemble_propensity(pl.DataFrame({"user_id": users, "item_id": items}), snapshot.tables)
    assert served.height == len(users)
    assert served.equals(whole.select("item_id", "category", "brand", *PROPENSITY_DENSE))


@pytest.mark.fast
def test_training_and_serving_collapse_repeats_into_the_same_sequence():
    """A view then a cart of the same item is one step in both, and two different items the model
    has never seen stay two 'unknown' steps in both (training once compared vocabulary indices and
    merged them, serving compared ids and did not: a training/serving skew)."""
    from datetime import datetime, timezone

    from pipeline.families.next_item.features import UNKNOWN, ItemVocab, user_histories, user_sequences

    t0 = datetime(2026, 11, 10, tzinfo=timezone.utc)
    steps = [
        ("A", "view"),
        ("B", "view"),
        ("B", "add_to_cart"),
        ("new-1", "view"),
        ("new-2", "view"),
        ("new-2", "add_to_cart"),
        ("A", "purchase"),
    ]
    events = pl.DataFrame(
        {
            "event_time": [t0 + timedelta(minutes=i) for i in range(len(steps))],
            "user_id": ["u1"] * len(steps),
            "session_id": ["s1"] * len(steps),
            "item_id": [item for item, _ in steps],
            "event_type": [kind for _, kind in steps],
            "price": [1.0] * len(steps),
            "quantity": [1] * len(steps),
        }
    ).with_columns(pl.col("event_time").dt.replace_time_zone("UTC"))
    vocab = ItemVocab.from_events(events.filter(pl.col("item_id").is_in(["A", "B"])))
    trained = user_sequences(events, vocab, t0 + timedelta(days=1))["u1"].tolist()
    served = user_histories(events, 50).filter(pl.col("user_id") == "u1")["items"][0].to_list()
    a, b = vocab.encode(pl.Series(["A", "B"])).tolist()
    assert trained == [a, b, UNKNOWN, UNKNOWN, a]
    assert served == ["A", "B", "new-1", "new-2", "A"]
    assert vocab.encode(pl.Series(served)).tolist() == trained


@pytest.mark.fast
def test_items_bought_at_the_same_instant_are_in_one_order_in_training_and_serving():
    """A checkout buys several items at one instant. Sorting on time alone left their order to the
    sort's threads: the demo's shop had a user whose served history ended in another order than
    the training sequence, and the packaging's parity check by user id failed on it."""
    from datetime import datetime, timezone

    from pipeline.families.next_item.features import ItemVocab, user_histories, user_sequences

    t0 = datetime(2026, 11, 10, tzinfo=timezone.utc)
    rows = [
        (t0, "view", "X"),
        (t0 + timedelta(minutes=1), "purchase", "Z"),
        (t0 + timedelta(minutes=1), "purchase", "X"),
        (t0 + timedelta(minutes=1), "purchase", "Y"),
    ]
    base = pl.DataFrame(
        {
            "event_time": [r[0] for r in rows],
            "user_id": ["u1"] * 4,
            "session_id": ["s1"] * 4,
            "item_id": [r[2] for r in rows],
            "event_type": [r[1] for r in rows],
            "price": [1.0] * 4,
            "quantity": [1] * 4,
        }
    )
    vocab = ItemVocab.from_events(base)
    seen = set()
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [0, 3, 1, 2], [2, 0, 3, 1]):
        events = base[order]
        served = tuple(user_histories(events, 50)["items"][0].to_list())
        trained = user_sequences(events, vocab, t0 + timedelta(days=1))["u1"].tolist()
        assert vocab.encode(pl.Series(served)).tolist() == trained
        seen.add(served)
    assert seen == {("X", "Y", "Z")}  # by item id within the instant, the view of X collapsed into its purchase


@pytest.mark.fast
def test_the_bento_requirements_are_the_locks_hashed_entries_or_a_clear_refusal(tmp_path):
    from pipeline.serving.package import ServingError, hashed_requirements

    assert hashed_requirements(["numpy==2.0.0"], root=tmp_path) is None  # no locks beside the code
    (tmp_path / "requirements.lock").write_text(
        "# header\nnumpy==2.0.0 \\\n    --hash=sha256:aa\nzc-lockfile==3.0 \\\n    --hash=sha256:bb\n"
    )
    (tmp_path / "requirements-torch.lock").write_text(
        "torch==2.13.0 \\\n    --hash=sha256:cc\n"
        "nvidia-cublas==13.1 ; sys_platform == 'linux' \\\n    --hash=sha256:dd\n"
    )
    text = hashed_requirements(["numpy==2.0.0", "zc.lockfile==3.0"], root=tmp_path)
    assert "numpy==2.0.0 \\\n    --hash=sha256:aa" in text and "zc-lockfile==3.0" in text and "torch==" not in text
    with_torch = hashed_requirements(["numpy==2.0.0", "torch==2.13.0"], root=tmp_path)
    assert "torch==2.13.0" in with_torch and "nvidia-cublas==13.1 ; sys_platform == 'linux'" in with_torch
    with pytest.raises(
        ServingError, match=r"not in it \['pandas'\].*other versions \['numpy 2\.1\.0 \(locked: 2\.0\.0\)'\]"
    ):
        hashed_requirements(["numpy==2.1.0", "pandas==2.2.0"], root=tmp_path)


@pytest.mark.fast
def test_a_served_bento_keeps_the_callers_state_folder_when_the_environment_names_none(tmp_path, monkeypatch):
    """``shopml replay --serve`` run without ``SHOPML_HOME`` printed that it logged the answers to the
    state folder, but the server it started had no state folder: it logged nothing, and fraud kept
    the orders it scored under the Bento's own folder. The server now gets the caller's."""
    from unittest import mock

    from pipeline.core.settings import get_state_paths
    from pipeline.data.predictions import default_root
    from pipeline.serving.package import server_environment

    monkeypatch.chdir(tmp_path)
    for name in ("SHOPML_HOME", "SHOPML_PREDICTION_LOG", "SHOPML_FRAUD_RECENT"):
        monkeypatch.delenv(name, raising=False)
    paths = get_state_paths()  # the default: .state in the current folder
    assert paths.home == (tmp_path / ".state").resolve()
    env = server_environment(paths, tmp_path / "bentoml")
    bento_folder = tmp_path / "bentoml" / "bentos" / "shopml-fraud" / "v1" / "src"
    bento_folder.mkdir(parents=True)
    monkeypatch.chdir(bento_folder)  # where bentoml serve runs a service
    with mock.patch.dict(os.environ, env, clear=True):
        assert default_root() == str(paths.home / "predictions")
        assert get_state_paths().home == paths.home
    assert env["BENTOML_HOME"] == str(tmp_path / "bentoml")
