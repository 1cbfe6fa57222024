"""Closing the loop: prediction logging, online quality, drift, skew, retrain requests, online gate.

The fast tests check each part on its own; the slow ones (``make test-slow``) run the loop on a
generated shop: serve the champion, replay a day of its sessions, ingest the following day, judge
the answers; and a shop whose behaviour shifts.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.data.drift import js_divergence, psi
from pipeline.data.predictions import read_predictions


def _answer(log, hour: int, user: str, items=("a", "b"), minute: int = 0) -> bool:
    return log.record(request_id=f"r-{user}-{hour}-{minute}", ts=datetime(2026, 11, 5, hour, minute,
                                                                             tzinfo=timezone.utc),
                      model_version="3", role="champion", user_id=user, items=list(items), scores=[0.9, 0.1],
                      source="model")


@pytest.mark.fast
def test_the_prediction_log_writes_hourly_parquet_files_that_read_back(tmp_path):
    from pipeline.serving.predlog import PredictionLog

    log = PredictionLog(str(tmp_path / "predictions"), "next_item", flush_seconds=60)
    assert all(_answer(log, hour, user) for hour, user in ((9, "u1"), (9, "u2"), (10, "u1")))
    log.close()
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "predictions").rglob("*") if p.is_file())
    assert [str(p.parent) for p in files] == ["predictions/next_item/date=2026-11-05/hour=09",
                                              "predictions/next_item/date=2026-11-05/hour=10"]
    assert all(p.suffix == ".parquet" and not p.name.startswith(".") for p in files)   # no temporary left
    back = read_predictions(str(tmp_path / "predictions"), "next_item", "2026-11-05")
    assert back["user_id"].to_list() == ["u1", "u2", "u1"] and back["items"][0].to_list() == ["a", "b"]
    assert back["ts"].dtype == pl.Datetime("us", "UTC") and set(back["role"]) == {"champion"}
    assert read_predictions(str(tmp_path / "predictions"), "next_item", "2026-11-06").height == 0
    assert log.written == 3 and not log.dropped


@pytest.mark.fast
def test_a_full_queue_or_a_broken_sink_drops_answers_with_a_count_and_never_raises(tmp_path):
    from pipeline.serving.predlog import PredictionLog

    drops = []
    log = PredictionLog(str(tmp_path / "p"), "next_item", capacity=2, on_drop=lambda n, why: drops.append((n, why)))
    log.close()                 # the writer stopped: nothing drains the queue
    assert [_answer(log, 9, u) for u in ("u1", "u2", "u3")] == [True, True, False]
    assert log.dropped == {"queue_full": 1} and drops == [(1, "queue_full")]

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    broken = PredictionLog(str(blocked / "predictions"), "next_item", flush_seconds=60)
    assert _answer(broken, 9, "u1") and _answer(broken, 9, "u2")
    broken.close()              # the write fails: counted, logged, not raised
    assert broken.dropped == {"sink_error": 2} and broken.written == 0


@pytest.mark.fast
def test_psi_jensen_shannon_and_calibration_error_measure_what_they_should():
    from pipeline.families.purchase_propensity.evaluation import expected_calibration_error

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 20_000)
    assert psi(reference, rng.normal(0, 1, 5_000)) < 0.02
    assert psi(reference, rng.normal(1, 1, 5_000)) > 0.25
    same = pl.Series("x", ["a", "b", "b", "c"] * 100)
    assert js_divergence(same, same) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(pl.Series("x", ["a"] * 50), pl.Series("x", ["b"] * 50)) == pytest.approx(1.0)
    p = rng.random(50_000)
    assert expected_calibration_error((rng.random(50_000) < p).astype(float), p) < 0.01
    assert expected_calibration_error(np.zeros_like(p), p) == pytest.approx(p.mean(), rel=1e-6)


@pytest.mark.fast
def test_a_canary_serves_the_configured_share_of_users_sticky_by_user():
    from pipeline.serving.common import Routing

    canary = Routing("shopml-next-item:v2", "canary", 0.3)
    users = [f"user-{i}" for i in range(5000)]
    first = [canary.to_challenger(u) for u in users]
    assert 0.27 < np.mean(first) < 0.33
    assert first == [canary.to_challenger(u) for u in users]           # sticky
    wider = Routing("shopml-next-item:v2", "canary", 0.5)
    assert all(wider.to_challenger(u) for u, c in zip(users, first, strict=True) if c)   # a larger share keeps them
    assert not any(Routing("shopml-next-item:v2", "shadow", 0.3).to_challenger(u) for u in users)


@pytest.mark.fast
def test_retrain_requests_are_recorded_once_per_cooldown(state):
    from pipeline.lifecycle.monitor import MonitoringPolicy, requests_file, retrain_decision

    policy = MonitoringPolicy(cooldown_hours=48)
    assert not retrain_decision(state, "next_item", "2026-11-10", [], policy).requested
    assert not requests_file(state, "next_item").exists()
    first = retrain_decision(state, "next_item", "2026-11-10", ["drift: item JS 0.5"], policy)
    again = retrain_decision(state, "next_item", "2026-11-11", ["drift: item JS 0.6"], policy)
    later = retrain_decision(state, "next_item", "2026-11-12", ["drift: price PSI 0.4"], policy)
    assert first.requested and "REQUESTED (drift: item JS 0.5)" in first.line()
    assert not again.requested and again.suppressed_by["day"] == "2026-11-10"
    assert "held back by the cool-down until 2026-11-13T00:00:00+00:00" in again.line()
    assert later.requested    # the end of 2026-11-12 is 48 h after the end of 2026-11-10
    import json

    assert [r["day"] for r in json.loads(requests_file(state, "next_item").read_text())] == ["2026-11-10",
                                                                                              "2026-11-12"]


@pytest.mark.fast
def test_the_unpaired_bootstrap_tells_worse_from_not_worse():
    from pipeline.lifecycle.gate import two_sample_bootstrap

    rng = np.random.default_rng(1)

    def side(rate, users):
        groups = np.repeat(np.arange(users), 5)
        return groups, (rng.random(groups.size) < rate).astype(float), None

    mean = lambda labels: (lambda values, rows: float(values.mean()))   # noqa: E731
    _, (low, high) = two_sample_bootstrap(side(0.3, 400), side(0.3, 400), mean, 500, 0.95, 0)
    assert low < 0 < high
    _, (low, high) = two_sample_bootstrap(side(0.1, 400), side(0.3, 400), mean, 500, 0.95, 0)
    assert high < 0


@pytest.mark.fast
def test_the_skew_report_names_the_feature_and_the_share_of_users_affected(tmp_path):
    """A snapshot altered for some users: the report names the feature, the share and a user."""
    import shutil

    from pipeline.core.params import GenerateParams
    from pipeline.data.generate import generate_shop_data
    from pipeline.families.next_item.monitoring import user_skew
    from pipeline.families.purchase_propensity.monitoring import pair_skew
    from pipeline.serving.replay import read_day
    from pipeline.serving.snapshot import FeatureSnapshot, write_snapshot_of

    days = generate_shop_data(GenerateParams(seed=3, days=4, events_per_day=1500, initial_users=400,
                                             initial_items=300), tmp_path / "landing")
    events = pl.concat([read_day(d.events_path) for d in days])
    catalog = pl.read_csv(days[-1].catalog_path)
    write_snapshot_of(events, catalog, "v1", tmp_path / "real")
    snapshot = FeatureSnapshot.load(tmp_path / "real")
    users = snapshot.histories.filter(pl.col("items").list.n_unique() >= 3)["user_id"].head(100).to_list()
    assert [s.skewed_users for s in user_skew(snapshot, events, users)] == [0, 0]   # the real one: no skew

    victims = users[:4]
    shutil.copytree(tmp_path / "real", tmp_path / "skewed")
    histories = pl.read_parquet(tmp_path / "real" / "histories.parquet")
    histories.with_columns(pl.when(pl.col("user_id").is_in(victims)).then(pl.col("items").list.reverse())
                           .otherwise(pl.col("items")).alias("items")).write_parquet(tmp_path / "skewed"
                                                                                      / "histories.parquet")
    user = pl.read_parquet(tmp_path / "real" / "user.parquet")
    user.with_columns(pl.when(pl.col("user_id").is_in(victims[:2])).then(pl.col("u_sessions") + 5)
                      .otherwise(pl.col("u_sessions")).alias("u_sessions")).write_parquet(tmp_path / "skewed"
                                                                                          / "user.parquet")
    skewed = FeatureSnapshot.load(tmp_path / "skewed")
    report = {s.feature: s for s in user_skew(skewed, events, users)}
    assert report["history"].skewed_users == 4 and report["history"].share == pytest.approx(0.04)
    assert report["history"].example.removeprefix("user_id ") in victims and report["purchased"].skewed_users == 0
    pairs = skewed.tables["user_item"].filter(pl.col("user_id").is_in(users)).select("user_id", "item_id")
    by_feature = {s.feature: s for s in pair_skew(skewed, events, catalog, pairs)}
    assert by_feature["u_sessions"].skewed_users == 2 and "served" in by_feature["u_sessions"].example
    assert by_feature["u_sessions"].share == pytest.approx(2 / pairs["user_id"].n_unique())
    assert sum(s.skewed_users for name, s in by_feature.items() if name != "u_sessions") == 0


# ---- The loop on a generated shop (slow) -----------------------------------------------------------

DAY_TRAINED, DAY_SERVED = "2026-11-10", "2026-11-11"


def _shop(home: Path, monkeypatch, days: int, publish: int, **shift):
    from pipeline.cli import main as cli
    from pipeline.core.params import GenerateParams
    from pipeline.core.settings import get_state_paths
    from pipeline.data.generate import generate_shop_data

    monkeypatch.setenv("SHOPML_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SHOPML_PREDICTION_LOG", raising=False)
    paths = get_state_paths()
    generate_shop_data(GenerateParams(seed=11, start_date="2026-11-01", days=days, events_per_day=3000,
                                      initial_users=1200, initial_items=800, **shift), paths.landing)
    assert cli(["run", "--start", "2026-11-01", "--days", str(publish)]) == 0
    return paths


def _retrain(paths, model: str):
    from pipeline.core.params import TrainPropensityParams, TrainRecommenderParams, load_params
    from pipeline.lifecycle import steps
    from pipeline.lifecycle.gate import load_policy

    params = dataclasses.replace(load_params(), train_recommender=TrainRecommenderParams(
        max_len=20, dim=32, layers=1, epochs=5, patience=2), train_propensity=TrainPropensityParams(epochs=4))
    policy = dataclasses.replace(load_policy(model), bootstrap_samples=200)
    return steps.retrain(paths, params, model, policy=policy)


@pytest.mark.slow
def test_a_replayed_day_is_judged_against_the_next_days_events_on_the_model_version(tmp_path, monkeypatch):
    from pipeline.cli import main as cli
    from pipeline.core.tracking import mlflow_client
    from pipeline.data.version import current_dataset_version
    from pipeline.lifecycle import monitor as monitoring
    from pipeline.serving.package import served
    from pipeline.serving.replay import read_day, replay

    paths = _shop(tmp_path / "state", monkeypatch, days=11, publish=10)
    champions = {m: _retrain(paths, m) for m in ("next_item", "purchase_propensity")}
    day_file = paths.landing / "events" / f"events-{DAY_SERVED}.csv"
    env = {"SHOPML_ACCEPT_EVENT_TIME": "1", "SHOPML_PREDICTION_LOG_FLUSH_S": "1"}
    for model, state in champions.items():
        with served(paths, state["bento_tag"], env=env) as url:
            result = replay(url, model, read_day(day_file), concurrency=8)
            assert result.requests > 100 and result.failed == 0, result.statuses
            time.sleep(3)   # a flush a second
        logged = read_predictions(str(paths.home / "predictions"), model, DAY_SERVED)
        assert logged.height == result.requests and set(logged["model_version"]) == {state["version"]}
        assert logged["ts"].dt.date().unique().to_list() == [date.fromisoformat(DAY_SERVED)]  # replayed times

    assert cli(["run", "--date", DAY_SERVED]) == 0      # the following events arrive
    client = mlflow_client(paths)
    for model, state in champions.items():
        policy = monitoring.load_monitoring_policy(model)
        outcome = monitoring.monitor(paths, model, DAY_SERVED, policy=policy)
        lines = outcome.lines(policy)
        figures = outcome.champion_online
        if model == "next_item":
            assert re.fullmatch(rf"online next_item {DAY_SERVED}: hit_rate_at_10 0\.\d{{4}}, ndcg_at_10 0\.\d{{4}} "
                                r"over \d+ users \(champion v\d+; offline test hit_rate_at_10 0\.\d{4}\)", lines[0])
            # The session's next step is in the served top 10 far more often than chance (1,200 items).
            assert figures["users"] >= 50 and figures["hit_rate_at_10"] > 0.05
        else:
            assert lines[0].startswith(f"online purchase_propensity {DAY_SERVED}: auc 0.")
            assert figures["users"] >= 50 and figures["auc"] > 0.6 and 0 < figures["purchase_rate"] < 1
        assert outcome.dataset_version == current_dataset_version(paths).version
        assert not any(d.drifted for d in outcome.drift if d.feature in ("item popularity band", "category"))
        assert outcome.skew and all(s.skewed_users == 0 for s in outcome.skew)
        mv = client.get_model_version(model, state["version"])
        assert mv.tags["online.last_day"] == DAY_SERVED and mv.tags[f"online.{DAY_SERVED}"].startswith("champion: ")
        assert client.list_artifacts(outcome.run_id, "reports")
        again = monitoring.monitor(paths, model, DAY_SERVED, policy=policy)
        assert again.run_id == outcome.run_id      # a rerun of the day replaces its figures


@pytest.mark.slow
def test_a_behaviour_shift_is_flagged_and_requests_one_retrain_inside_the_cooldown(tmp_path, monkeypatch):
    """New items take most of the traffic from 2026-11-11: the drift report flags it, the monitor
    DAG's request task updates the retrain Asset once; the next day, still shifted, is held back."""
    import sys
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    from conftest import REPO
    from pipeline.lifecycle import monitor as monitoring

    paths = _shop(tmp_path / "state", monkeypatch, days=12, publish=10, shift="new_items", shift_day=10)
    _retrain(paths, "next_item")
    from pipeline.cli import main as cli

    assert cli(["run", "--start", DAY_SERVED, "--days", "2"]) == 0
    sys.path.insert(0, str(REPO / "dags"))
    import monitor_models
    from shopml_common import retrain_request

    request = monitor_models.MONITOR_DAG.get_task("request_retrain_next_item").python_callable
    policy = monitoring.load_monitoring_policy("next_item")
    asset = retrain_request("next_item")
    updates = []
    for day in (DAY_TRAINED, DAY_SERVED, "2026-11-12"):
        result = monitoring.monitor(paths, "next_item", day, policy=policy)
        band = next(d for d in result.drift if d.feature == "item popularity band")
        assert band.drifted == (day != DAY_TRAINED), (day, band)
        monitored = {"day": day, "dataset_version": result.dataset_version,
                     "reasons": monitoring.retrain_reasons(result, policy)}
        outlet = {asset: SimpleNamespace(extra=None)}
        try:
            request(monitored, outlet_events=outlet)
            updates.append((day, outlet[asset].extra))
        except AirflowSkipException as skipped:
            assert day != DAY_SERVED, skipped
    assert [d for d, _ in updates] == [DAY_SERVED]
    assert updates[0][1]["reason"].startswith("drift: item popularity band JS")
    held = monitoring.retrain_decision(paths, "next_item", "2026-11-12", ["drift"], policy)
    assert not held.requested and held.suppressed_by["day"] == DAY_SERVED
    assert datetime.fromisoformat(held.suppressed_by["until"]) == datetime(2026, 11, 12, tzinfo=timezone.utc) \
        + timedelta(hours=policy.cooldown_hours)


@pytest.mark.fast
def test_the_prediction_log_writes_to_an_object_store_uri_without_renames(monkeypatch):
    """The object-store path (s3://... in production): fsspec's in-memory filesystem stands in for
    S3, as a store without rename; every flush is one object and reads back from the same URI."""
    import fsspec

    from pipeline.serving.predlog import PredictionLog

    fs = fsspec.filesystem("memory")
    moved = []
    monkeypatch.setattr(type(fs), "mv", lambda self, *a, **k: moved.append(a))   # an object store has no rename
    log = PredictionLog("memory://bucket/predictions", "next_item", flush_seconds=60)
    assert not log.local
    for user in ("u1", "u2"):
        _answer(log, 9, user)
    log.close()
    keys = fs.glob("/bucket/predictions/next_item/date=2026-11-05/hour=09/*.parquet")
    assert len(keys) == 1 and moved == [] and log.written == 2
    back = read_predictions("memory://bucket/predictions", "next_item", "2026-11-05")
    assert back["user_id"].to_list() == ["u1", "u2"]
