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
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from pipeline.data.drift import js_divergence, psi
from pipeline.data.predictions import read_predictions


def _answer(log, hour: int, user: str, items=("a", "b"), minute: int = 0) -> bool:
    return log.record(
        request_id=f"r-{user}-{hour}-{minute}",
        ts=datetime(2026, 11, 5, hour, minute, tzinfo=timezone.utc),
        model_version="3",
        role="champion",
        user_id=user,
        items=list(items),
        scores=[0.9, 0.1],
        source="model",
    )


@pytest.mark.fast
def test_the_prediction_log_writes_hourly_parquet_files_that_read_back(tmp_path):
    from pipeline.serving.predlog import PredictionLog

    log = PredictionLog(str(tmp_path / "predictions"), "next_item", flush_seconds=60)
    assert all(_answer(log, hour, user) for hour, user in ((9, "u1"), (9, "u2"), (10, "u1")))
    log.close()
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "predictions").rglob("*") if p.is_file())
    assert [str(p.parent) for p in files] == [
        "predictions/next_item/date=2026-11-05/hour=09",
        "predictions/next_item/date=2026-11-05/hour=10",
    ]
    assert all(p.suffix == ".parquet" and not p.name.startswith(".") for p in files)  # no temporary left
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
    log.close()  # the writer stopped: nothing drains the queue
    assert [_answer(log, 9, u) for u in ("u1", "u2", "u3")] == [True, True, False]
    assert log.dropped == {"queue_full": 1} and drops == [(1, "queue_full")]

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    broken = PredictionLog(str(blocked / "predictions"), "next_item", flush_seconds=60)
    assert _answer(broken, 9, "u1") and _answer(broken, 9, "u2")
    broken.close()  # the write fails: counted, logged, not raised
    assert broken.dropped == {"sink_error": 2} and broken.written == 0


@pytest.mark.fast
def test_a_row_no_hour_can_hold_is_dropped_and_the_log_keeps_writing(tmp_path):
    """``0001-01-01T00:00:00+14:00`` parses, but no UTC hour folder can name it: it was an
    OverflowError in the writer thread, which died, and every later answer was lost."""
    from datetime import timedelta

    from pipeline.serving.common import replay_time
    from pipeline.serving.predlog import PredictionLog

    log = PredictionLog(str(tmp_path / "predictions"), "next_item", flush_seconds=0.1)
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    assert log.record(
        request_id="r-bad",
        ts=early,
        model_version="3",
        role="champion",
        user_id="u0",
        items=["a"],
        scores=[0.5],
        source="model",
    )
    import time

    time.sleep(0.5)  # the bad row's flush has happened
    assert _answer(log, 9, "u1") and _answer(log, 10, "u2")
    log.close()
    assert log._thread.is_alive() is False and log.written == 2 and log.dropped == {"bad_row": 1}
    assert read_predictions(str(tmp_path / "predictions"), "next_item", "2026-11-05")["user_id"].to_list() == [
        "u1",
        "u2",
    ]
    # The header itself never reaches the log: a time outside the window logs at the serving time.
    now = datetime(2026, 12, 3, 12, tzinfo=timezone.utc)
    assert replay_time("0001-01-01T00:00:00+14:00", now) == now
    assert replay_time("9999-12-31T23:59:59-14:00", now) == now  # past datetime's range in UTC
    assert replay_time("2027-01-01T00:00:00Z", now) == now  # the future
    assert replay_time("not a time", now) == now
    assert replay_time("2026-11-11T10:00:00+01:00", now) == datetime(2026, 11, 11, 9, tzinfo=timezone.utc)


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
    assert first == [canary.to_challenger(u) for u in users]  # sticky
    wider = Routing("shopml-next-item:v2", "canary", 0.5)
    assert all(wider.to_challenger(u) for u, c in zip(users, first, strict=True) if c)  # a larger share keeps them
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
    assert later.requested  # the end of 2026-11-12 is 48 h after the end of 2026-11-10
    import json

    assert [r["day"] for r in json.loads(requests_file(state, "next_item").read_text())] == ["2026-11-10", "2026-11-12"]


@pytest.mark.fast
def test_the_unpaired_bootstrap_tells_worse_from_not_worse():
    from pipeline.lifecycle.gate import two_sample_bootstrap

    rng = np.random.default_rng(1)
    mean = lambda values, rows: float(values.mean())  # noqa: E731

    def side(rate, users):
        groups = np.repeat(np.arange(users), 5)
        return groups, (rng.random(groups.size) < rate).astype(float), mean

    _, (low, high) = two_sample_bootstrap(side(0.3, 400), side(0.3, 400), 500, 0.95, 0)
    assert low < 0 < high
    _, (low, high) = two_sample_bootstrap(side(0.1, 400), side(0.3, 400), 500, 0.95, 0)
    assert high < 0


def _at(hour: int, minute: int = 0, day: int = 11) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc)


@pytest.mark.fast
def test_the_next_step_outcome_join_on_a_hand_built_log():
    """Each answer's target is the user's next step strictly after it (repeats in a row collapsed, as
    in training), within the horizon; answers with none, or without a user, have no outcome."""
    from pipeline.families.next_item.monitoring import figures, outcomes

    events = pl.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b"],
            "event_time": [_at(10), _at(10, 5), _at(10, 10), _at(12, 0, day=12), _at(9)],
            "item_id": ["i1", "i1", "i2", "i3", "j1"],
            "event_type": ["view", "add_to_cart", "view", "view", "view"],
            "session_id": ["s1", "s1", "s1", "s2", "s3"],
        }
    )
    answers = pl.DataFrame(
        {
            "request_id": ["r1", "r2", "r3", "r4", "r5"],
            "ts": [_at(10), _at(10, 10), _at(9, 30), _at(10), _at(10, 7)],
            "user_id": ["a", "a", "b", "", "a"],
            "model_version": "1",
            "role": "champion",
            "items": [["i2", "i9"], ["i3"], ["j1"], ["i2"], ["i7", "i8", "i2"]],
        }
    )
    policy = SimpleNamespace(k=2, horizon_hours=24)
    out = outcomes(answers, events, policy).sort("request_id")
    # r1 at 10:00: the 10:00 view is not after it and the 10:05 cart of the same item is a repeat: i2.
    # r2 at 10:10: i3 comes 26 h later, past the horizon. r3: b has no later step. r4: no user.
    # r5 at 10:07: i2 is third in the list, outside the top k = 2.
    assert out["request_id"].to_list() == ["r1", "r5"]
    assert out["next_item"].to_list() == ["i2", "i2"] and out["hit"].to_list() == [1.0, 0.0]
    assert out["rank"].to_list() == [0, None] and out["ndcg"].to_list() == [1.0, 0.0]
    assert outcomes(answers, events, SimpleNamespace(k=2, horizon_hours=27))["request_id"].sort().to_list() == [
        "r1",
        "r2",
        "r5",
    ]  # a longer horizon reaches i3: a miss for r2
    assert outcomes(answers, events, SimpleNamespace(k=3, horizon_hours=24))["hit"].to_list() == [1.0, 1.0]
    assert figures(out, policy)["hit_rate_at_2"] == 0.5 and figures(out, policy)["users"] == 1


@pytest.mark.fast
def test_a_day_replayed_twice_is_counted_once(tmp_path):
    """A replay resent (an Airflow retry, ``make demo`` run again) logs every answer again, under new
    request ids: the online figures count each answer once. Answers that only look alike stay: a
    shadow's answer to the same request, the same user a minute later, another session's history at
    the same second."""
    from pipeline.data.predictions import distinct_answers
    from pipeline.families.next_item.monitoring import figures, outcomes
    from pipeline.serving.predlog import PredictionLog

    root = str(tmp_path / "predictions")

    def replay(run: int) -> None:
        log = PredictionLog(root, "next_item", flush_seconds=60)
        for n, (minute, user, role, history, items) in enumerate(
            [
                (0, "a", "champion", ["i0"], ["i1", "i9"]),
                (0, "a", "shadow", ["i0"], ["i9", "i1"]),  # the challenger's answer, logged beside
                (1, "a", "champion", ["i0", "i1"], ["i2", "i9"]),  # a minute later
                (1, "a", "champion", ["i5"], ["i6", "i1"]),  # another session of a's, the same second
                (0, "b", "champion", ["j0"], ["j2", "j1"]),
            ]
        ):
            assert log.record(
                request_id=f"run{run}-{n}",  # the server's: new on every run
                ts=_at(10, minute),
                model_version="3",
                role=role,
                user_id=user,
                items=items,
                scores=[0.9, 0.1],
                source="model",
                history=history,
            )
        log.close()

    replay(1)
    once = read_predictions(root, "next_item", "2026-11-11")
    replay(2)
    twice = read_predictions(root, "next_item", "2026-11-11")
    kept, repeats = distinct_answers(twice)
    assert twice.height == 10 and kept.height == 5 and repeats == 5
    assert distinct_answers(once)[1] == 0 and distinct_answers(once)[0].equals(once)
    assert sorted(kept["request_id"]) == sorted(once["request_id"])  # the first run's rows

    events = pl.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "event_time": [_at(10, 2), _at(10, 3), _at(10, 4)],
            "item_id": ["i2", "i6", "j1"],
            "event_type": ["view", "view", "view"],
            "session_id": ["s1", "s2", "s3"],
        }
    )
    policy = SimpleNamespace(k=2, horizon_hours=24)
    judged = outcomes(kept, events, policy)
    assert figures(judged, policy) == figures(outcomes(once, events, policy), policy)
    assert figures(judged.filter(pl.col("role") == "champion"), policy)["requests"] == 4
    assert figures(outcomes(twice, events, policy).filter(pl.col("role") == "champion"), policy)["requests"] == 8


@pytest.mark.fast
def test_the_propensity_outcome_join_keeps_each_answer_to_the_same_request_apart():
    """A served candidate's label: bought strictly after the answer and within the horizon. The
    champion's, a shadow's and a floor's answers to one request stay three sets of rows (they were
    once merged by request and item, so the shadow's and the floor's probabilities were lost)."""
    from pipeline.families.purchase_propensity.monitoring import outcomes

    answers = pl.DataFrame(
        {
            "request_id": ["r1"] * 3,
            "ts": [_at(10)] * 3,
            "user_id": ["u"] * 3,
            "model_version": ["3", "4", "logistic_regression"],
            "role": ["champion", "shadow", "floor"],
            "items": [["a", "b", "c"]] * 3,
            "scores": [[0.9, 0.1, 0.5], [0.8, 0.2, 0.4], [0.3, 0.6, 0.1]],
        }
    )
    events = pl.DataFrame(
        {
            "user_id": ["u", "u", "u"],
            "item_id": ["a", "b", "c"],
            "event_type": ["purchase"] * 3,
            "event_time": [_at(11), _at(10), _at(11, day=13)],
        }
    )  # after; at the answer; past 48 h
    out = outcomes(answers, events, SimpleNamespace(horizon_hours=48))
    assert out.height == 9
    by_role = {role: part.sort("item_id") for (role,), part in out.group_by("role")}
    assert {r: p["probability"].to_list() for r, p in by_role.items()} == {
        "champion": [0.9, 0.1, 0.5],
        "shadow": [0.8, 0.2, 0.4],
        "floor": [0.3, 0.6, 0.1],
    }
    assert all(p["label"].to_list() == [1.0, 0.0, 0.0] for p in by_role.values())


@pytest.mark.fast
def test_the_online_statistic_is_the_figure_per_user_under_resampling():
    from pipeline.families.next_item.monitoring import figures, statistic

    # u1 has nine requests, all hits; u2 and u3 one miss each: per user 1/3, per request 0.82.
    frame = pl.DataFrame(
        {"user_id": ["u1"] * 9 + ["u2", "u3"], "hit": [1.0] * 9 + [0.0, 0.0], "ndcg": [1.0] * 9 + [0.0, 0.0]}
    )
    stat = statistic(frame)
    values, rows = frame["hit"].to_numpy(), np.arange(frame.height)
    assert (
        stat(values, rows)
        == pytest.approx(figures(frame, SimpleNamespace(k=10))["hit_rate_at_10"])
        == pytest.approx(1 / 3)
    )
    # A resample that draws u2 twice and u1 once: three users, one hit.
    drawn = np.concatenate([np.arange(9), [9, 9]])
    assert stat(values[drawn], drawn) == pytest.approx(1 / 3)


def _online_outcomes(users: int, swapped: float, lost: float = 0.0, seed: int = 0) -> pl.DataFrame:
    """A champion and a shadow on the same requests (three per user): the shadow's hit differs on a
    ``swapped`` share of requests, as many won as lost (no difference on average), and it loses a
    further ``lost`` share of the champion's hits."""
    rng = np.random.default_rng(seed)
    ids = [f"u{i}" for i in range(users) for _ in range(3)]
    champion = (rng.random(len(ids)) < 0.4).astype(float)
    shadow = champion.copy()
    hits, misses = rng.permutation(np.flatnonzero(champion == 1)), rng.permutation(np.flatnonzero(champion == 0))
    n = int(swapped * len(ids) / 2)
    shadow[hits[:n]], shadow[misses[:n]] = 0.0, 1.0
    shadow[hits[n : n + int(lost * len(ids))]] = 0.0
    requests = [f"r{i}" for i in range(len(ids))]
    return pl.concat(
        [
            pl.DataFrame(
                {"request_id": requests, "user_id": ids, "role": role, "model_version": version, "hit": values}
            )
            for role, version, values in (("champion", "1", champion), ("shadow", "2", shadow))
        ]
    )


@pytest.mark.fast
def test_the_online_gate_needs_a_sample_that_bounds_the_loss():
    from pipeline.lifecycle.monitor import MonitoringPolicy, judge_online

    policy = MonitoringPolicy(online_min_users=100, online_margin=0.03, bootstrap_samples=300)
    few = judge_online(_online_outcomes(50, 0.3), "next_item", "2", ["2026-11-11"], policy)
    assert not few.passed and "50 users answered by both, 100 needed" in few.reasons[0]
    # Enough users to be counted, too few to bound the loss: equal models wait (the old rule passed them).
    small = judge_online(_online_outcomes(150, 0.3), "next_item", "2", ["2026-11-11"], policy)
    assert not small.passed and small.interval[0] < -0.03 < small.interval[1]
    assert "more traffic narrows it" in small.reasons[0]
    large = judge_online(_online_outcomes(6000, 0.3), "next_item", "2", ["2026-11-11"], policy)
    assert large.passed and large.interval[0] > -0.03 and large.mode == "shadow"
    worse = judge_online(_online_outcomes(6000, 0.3, lost=0.1), "next_item", "2", ["2026-11-11"], policy)
    assert not worse.passed and "significantly worse" in worse.reasons[0]


@pytest.mark.fast
def test_retrain_triggers_compare_with_the_floors_and_earlier_days_and_ignore_provisional_days(state):
    from pipeline.lifecycle.monitor import MonitoringPolicy, MonitorResult, retrain_decision, retrain_reasons, unweighed

    policy = MonitoringPolicy(min_users=50, max_drop=0.2)

    def day(judged: bool, value: float, floors: dict, earlier: float | None = None, users=400.0) -> MonitorResult:
        return MonitorResult(
            "next_item",
            "2026-11-11",
            "d" * 32,
            "3",
            {"champion v3": {"hit_rate_at_10": value, "users": users}},
            {},
            judged=judged,
            floors=floors,
            earlier=earlier,
            coverage_hours=6.0,
        )

    below = {"cooccurrence": (-0.09, (-0.12, -0.06)), "popularity": (0.3, (0.27, 0.33))}
    within = {"cooccurrence": (-0.01, (-0.04, 0.02))}
    [reason] = retrain_reasons(day(True, 0.42, below), policy)
    assert reason.startswith("online hit_rate_at_10: the champion is below the floor cooccurrence")
    assert retrain_reasons(day(True, 0.50, within), policy) == []
    assert retrain_reasons(day(False, 0.42, below), policy) == []  # provisional: not evidence yet
    [drop] = retrain_reasons(day(True, 0.30, within, earlier=0.45), policy)
    assert drop.startswith("online hit_rate_at_10 0.3000 < 0.80 x 0.4500, the median of its own earlier days")
    assert retrain_reasons(day(True, 0.40, within, earlier=0.45), policy) == []

    # A champion below a floor on a day too small (or too early) to count: no retrain, and the decision
    # says why the online figures were not weighed rather than that no threshold was crossed.
    few = day(True, 0.42, below, users=49.0)
    assert retrain_reasons(few, policy) == [] and unweighed(day(True, 0.42, below), policy) == ""
    decision = retrain_decision(state, "next_item", "2026-11-11", [], policy, unweighed=unweighed(few, policy))
    assert not decision.requested and decision.line() == (
        "retrain next_item 2026-11-11: not needed (no threshold crossed; the online figures over 49 users are "
        "fewer than min_users 50, so not weighed)"
    )
    assert unweighed(day(False, 0.42, below), policy) == (
        "the online figures are provisional (6 h of events after the day, 24 h needed), so they were not weighed"
    )


@pytest.mark.fast
def test_the_skew_report_names_the_feature_and_the_share_of_users_affected(tmp_path):
    """A snapshot altered for some users: the report names the feature, the share and a user."""
    import shutil

    from pipeline.core.params import GenerateParams
    from pipeline.data.generate import generate_shop_data
    from pipeline.families.next_item import serving as next_item
    from pipeline.families.next_item.monitoring import user_skew
    from pipeline.families.purchase_propensity import serving as propensity
    from pipeline.families.purchase_propensity.monitoring import pair_skew
    from pipeline.serving.replay import read_day
    from pipeline.serving.snapshot import FeatureSnapshot, write_snapshot_of

    def both_families(events, catalog, cutoff):  # one folder for both families' tables
        return {
            **next_item.snapshot_tables(events, catalog, cutoff),
            **propensity.snapshot_tables(events, catalog, cutoff),
        }

    days = generate_shop_data(
        GenerateParams(seed=3, days=4, events_per_day=1500, initial_users=400, initial_items=300), tmp_path / "landing"
    )
    events = pl.concat([read_day(d.events_path) for d in days])
    catalog = pl.read_csv(days[-1].catalog_path)
    write_snapshot_of(both_families, events, catalog, "v1", tmp_path / "real")
    snapshot = FeatureSnapshot.load(tmp_path / "real")
    users = snapshot.tables["histories"].filter(pl.col("items").list.n_unique() >= 3)["user_id"].head(100).to_list()
    assert [s.skewed_users for s in user_skew(snapshot, events, users)] == [0, 0]  # the real one: no skew

    victims = users[:4]
    shutil.copytree(tmp_path / "real", tmp_path / "skewed")
    histories = pl.read_parquet(tmp_path / "real" / "histories.parquet")
    histories.with_columns(
        pl.when(pl.col("user_id").is_in(victims))
        .then(pl.col("items").list.reverse())
        .otherwise(pl.col("items"))
        .alias("items")
    ).write_parquet(tmp_path / "skewed" / "histories.parquet")
    user = pl.read_parquet(tmp_path / "real" / "user.parquet")
    user.with_columns(
        pl.when(pl.col("user_id").is_in(victims[:2]))
        .then(pl.col("u_sessions") + 5)
        .otherwise(pl.col("u_sessions"))
        .alias("u_sessions")
    ).write_parquet(tmp_path / "skewed" / "user.parquet")
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
    generate_shop_data(
        GenerateParams(
            seed=11,
            start_date="2026-11-01",
            days=days,
            events_per_day=3000,
            initial_users=1200,
            initial_items=800,
            **shift,
        ),
        paths.landing,
    )
    assert cli(["run", "--start", "2026-11-01", "--days", str(publish)]) == 0
    return paths


def _retrain(paths, model: str):
    from pipeline.core.params import TrainPropensityParams, TrainRecommenderParams, load_params
    from pipeline.lifecycle import steps
    from pipeline.lifecycle.gate import load_policy

    params = dataclasses.replace(
        load_params(),
        train_recommender=TrainRecommenderParams(max_len=20, dim=32, layers=1, epochs=5, patience=2),
        train_propensity=TrainPropensityParams(epochs=4),
    )
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

    # Thirteen days: ten to train on, the served day, and the two after it that its outcomes need (the
    # recommender's horizon is a day, the propensity model's two).
    paths = _shop(tmp_path / "state", monkeypatch, days=13, publish=10)
    champions = {m: _retrain(paths, m) for m in ("next_item", "purchase_propensity")}
    day_file = paths.landing / "events" / f"events-{DAY_SERVED}.csv"
    env = {"SHOPML_ACCEPT_EVENT_TIME": "1", "SHOPML_PREDICTION_LOG_FLUSH_S": "1"}
    sent = {}
    for model, state in champions.items():
        with served(paths, state["bento_tag"], env=env) as url:
            result = replay(url, model, read_day(day_file), concurrency=8)
            assert result.requests > 100 and result.failed == 0, result.statuses
            again = replay(url, model, read_day(day_file), concurrency=8)  # the replay task, retried
            assert again.requests == result.requests and again.failed == 0, again.statuses
            time.sleep(3)  # a flush a second
        sent[model] = result.requests
        logged = read_predictions(str(paths.home / "predictions"), model, DAY_SERVED)
        assert logged.height == 2 * result.requests and set(logged["model_version"]) == {state["version"]}
        assert logged["ts"].dt.date().unique().to_list() == [date.fromisoformat(DAY_SERVED)]  # replayed times

    # The served day alone: its late answers cannot have their outcome yet, so the figures are provisional
    # and no online figure triggers a retrain.
    assert cli(["run", "--date", DAY_SERVED]) == 0
    policy = monitoring.load_monitoring_policy("next_item")
    early = monitoring.monitor(paths, "next_item", DAY_SERVED, policy=policy)
    assert not early.judged and early.coverage_hours == 0
    assert (
        " (PROVISIONAL: next step within 24 h of each request, only 0 h of events after the day"
        in early.lines(policy)[0]
    )
    assert not any(r.startswith("online") for r in monitoring.retrain_reasons(early, policy))

    assert cli(["run", "--start", "2026-11-12", "--days", "2"]) == 0  # the following events arrive
    client = mlflow_client(paths)
    for model, state in champions.items():
        policy = monitoring.load_monitoring_policy(model)
        outcome = monitoring.monitor(paths, model, DAY_SERVED, policy=policy)
        lines = outcome.lines(policy)
        figures = outcome.champion_online
        assert outcome.judged and outcome.coverage_hours == 48
        # Every answer of the second replay repeats one of the first, and is counted once.
        assert outcome.repeats == sent[model] and lines[0].endswith(
            f"; {sent[model]} answers logged again (a day replayed twice) counted once"
        )
        if model == "next_item":
            assert re.fullmatch(
                rf"online next_item {DAY_SERVED} \(judged: next step within 24 h of each request, "
                r"every outcome horizon passed\): champion v\d+ hit_rate_at_10 0\.\d{4}, ndcg_at_10 "
                r"0\.\d{4} over \d+ users \(\d+ of \d+ answers had an outcome\); \d+ answers logged again .*",
                lines[0],
            ), lines[0]
            # Both floors answered the very requests the champion answered; whatever serves (the learned
            # model or the co-occurrence floor), it is far above popularity on them, with confidence.
            assert {"floor popularity", "floor cooccurrence"} <= set(outcome.online)
            assert outcome.online["floor popularity"]["requests"] == figures["requests"]
            assert outcome.floors["popularity"][1][0] > 0, outcome.floors
            assert any(
                line.startswith(
                    "offline next_item, same protocol (the same, on the held-out sessions of the "
                    "test period): hit_rate_at_10 champion 0."
                )
                for line in lines
            ), lines
            assert set(outcome.offline) == {"candidate", "popularity", "cooccurrence"}
        else:
            assert lines[0].startswith(
                f"online purchase_propensity {DAY_SERVED} (judged: served candidates bought "
                f"within 48 h, every outcome horizon passed): champion v"
            )
            assert figures["users"] >= 50 and figures["auc"] > 0.6 and 0 < figures["purchase_rate"] < 1
            floor = outcome.online["floor logistic_regression"]
            assert floor["candidates"] == figures["candidates"] and floor["auc"] > 0.6
        assert outcome.dataset_version == current_dataset_version(paths).version
        assert not any(d.drifted for d in outcome.drift if d.feature in ("item popularity band", "category"))
        assert outcome.skew and all(s.skewed_users == 0 for s in outcome.skew)
        mv = client.get_model_version(model, state["version"])
        assert mv.tags["online.last_day"] == DAY_SERVED and mv.tags[f"online.{DAY_SERVED}"].startswith("champion: ")
        assert client.list_artifacts(outcome.run_id, "reports")
        again = monitoring.monitor(paths, model, DAY_SERVED, policy=policy)
        assert again.run_id == outcome.run_id  # a rerun of the day replaces its figures


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
        monitored = {
            "day": day,
            "dataset_version": result.dataset_version,
            "reasons": monitoring.retrain_reasons(result, policy),
        }
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
    assert datetime.fromisoformat(held.suppressed_by["until"]) == datetime(
        2026, 11, 12, tzinfo=timezone.utc
    ) + timedelta(hours=policy.cooldown_hours)


@pytest.mark.fast
def test_the_prediction_log_writes_to_an_object_store_uri_without_renames(monkeypatch):
    """The object-store path (s3://... in production): fsspec's in-memory filesystem stands in for
    S3, as a store without rename; every flush is one object and reads back from the same URI."""
    import fsspec

    from pipeline.serving.predlog import PredictionLog

    fs = fsspec.filesystem("memory")
    moved = []
    monkeypatch.setattr(type(fs), "mv", lambda self, *a, **k: moved.append(a))  # an object store has no rename
    log = PredictionLog("memory://bucket/predictions", "next_item", flush_seconds=60)
    assert not log.local
    for user in ("u1", "u2"):
        _answer(log, 9, user)
    log.close()
    keys = fs.glob("/bucket/predictions/next_item/date=2026-11-05/hour=09/*.parquet")
    assert len(keys) == 1 and moved == [] and log.written == 2
    back = read_predictions("memory://bucket/predictions", "next_item", "2026-11-05")
    assert back["user_id"].to_list() == ["u1", "u2"]


@pytest.mark.fast
def test_a_client_cannot_choose_the_request_id_that_pairs_answers_and_picks_a_canary():
    """``x-request-id`` was the log's join key and the canary's key for a request without a user:
    a client could pick its model or forge shadow pairs. Now the id is the server's, every time."""
    from types import SimpleNamespace

    from pipeline.serving.common import Routing, request_context

    ctx = SimpleNamespace(request=SimpleNamespace(headers={"x-request-id": "pick-me"}))
    ids = [request_context(ctx) for _ in range(50)]
    assert len({i for i, _, _ in ids}) == 50 and all(client == "pick-me" for _, _, client in ids)
    canary = Routing("challenger:v1", "canary", 0.5)
    sides = {canary.to_challenger(request_id) for request_id, _, _ in ids}
    assert sides == {True, False}  # the same header lands on both sides: the client does not choose
