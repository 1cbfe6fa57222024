"""The price family: demand, point-in-time rows, floors and metrics, elasticities, prices, the gate's
WAPE, and the whole chain (train, evaluate, gate, register, package, serve) on a generated shop."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from pipeline.core.errors import BadInput
from pipeline.families.price import demand
from pipeline.families.price import forecast as fc
from pipeline.families.price.pricing import PricingPolicy, recommend

UTC = timezone.utc
DAY = timedelta(days=1)


def _events(rows: list[tuple]) -> pl.DataFrame:
    """(day offset, item, type, quantity, price) -> canonical events."""
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)  # a Monday
    return pl.DataFrame(
        {
            "event_time": [start + DAY * d for d, *_ in rows],
            "user_id": ["u"] * len(rows),
            "session_id": [f"s{i}" for i in range(len(rows))],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "price": [r[4] for r in rows],
            "quantity": [r[3] for r in rows],
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC"), "quantity": pl.Int32, "price": pl.Float64},
    )


def _catalog(items: dict[str, list[tuple[int, float]]]) -> pl.DataFrame:
    """item -> [(day offset, list price)] as a catalog history (known at the end of each day)."""
    start = datetime(2026, 1, 5, tzinfo=UTC)
    rows = [(i, "cat", None, p, start + DAY * (d + 1)) for i, changes in items.items() for d, p in changes]
    return pl.DataFrame(
        rows,
        schema={
            "item_id": pl.String,
            "category": pl.String,
            "brand": pl.String,
            "price": pl.Float64,
            "known_from": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )


@pytest.mark.fast
def test_returns_lower_demand_and_every_period_is_present():
    events = _events(
        [
            (0, "a", "purchase", 5, 2.0),
            (0, "a", "view", 1, None),
            (2, "a", "return", 2, 2.0),
            (3, "a", "purchase", 1, 3.0),
            (3, "b", "purchase", 4, 1.0),
        ]
    )
    panel = demand.demand_panel(events, _catalog({"a": [(0, 2.0), (3, 3.0)], "b": [(0, 1.0)]}), "day")
    a = panel.filter(pl.col("item_id") == "a").sort("period")
    assert a["units"].to_list() == [
        5.0,
        0.0,
        -2.0,
        1.0,
    ]  # the return is subtracted on its day; days without sales are 0
    assert a["returned"].to_list() == [0.0, 0.0, 2.0, 0.0]
    # A period's price: what was paid, else the list price known then (point in time).
    assert a["price"].to_list() == [2.0, 2.0, 2.0, 3.0]
    assert panel.filter(pl.col("item_id") == "b")["period"].min() == datetime(2026, 1, 8, tzinfo=UTC)
    weekly = demand.demand_panel(events, _catalog({"a": [(0, 2.0)], "b": [(0, 1.0)]}), "week")
    assert weekly.filter(pl.col("item_id") == "a")["units"].to_list() == [4.0]
    with pytest.raises(BadInput, match="period"):
        demand.demand_panel(events, _catalog({}), "month")


def _panel(days: int = 60, items: int = 6, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(items):
        base = 5 + 3 * i
        for d in range(days):
            price = 10.0 * (0.8 if (d // 7) % 3 == 0 else 1.0)
            weekday = 1.3 if d % 7 in (5, 6) else 1.0
            units = rng.poisson(base * weekday * (price / 10.0) ** -2.0)
            rows.append((d, f"i{i}", "purchase", max(int(units), 0), price))
    events = _events([r for r in rows if r[3] > 0])
    catalog = _catalog(
        {f"i{i}": [(d, 10.0 * (0.8 if (d // 7) % 3 == 0 else 1.0)) for d in range(days)] for i in range(items)}
    )
    return demand.demand_panel(events, catalog, "day")


@pytest.mark.fast
def test_a_row_reads_nothing_at_or_after_its_origin():
    """Every feature of a forecasting row comes from periods before its origin: changing the origin's
    and every later period's units and prices leaves the row's inputs (and features) as they were."""
    panel = _panel()
    origin = panel["period"].min() + DAY * 40
    config = fc.ForecastConfig("day", 3, 14, 7)
    rows = demand.forecast_rows(panel, [origin], 3, 14, "day")
    later = pl.col("period") >= origin
    changed = panel.with_columns(
        pl.when(later).then(pl.col("units") * 100 + 7).otherwise(pl.col("units")).alias("units"),
        pl.when(later).then(pl.col("price") * 3).otherwise(pl.col("price")).alias("price"),
    )
    again = demand.forecast_rows(changed, [origin], 3, 14, "day")
    inputs = [c for c in rows.columns if c not in ("units", "price")]
    assert rows.select(inputs).equals(again.select(inputs))
    vocab = fc.make_vocab(panel)
    x1, _ = fc.feature_matrix(rows.with_columns(pl.lit(9.0).alias("price")), config, vocab)
    x2, _ = fc.feature_matrix(again.with_columns(pl.lit(9.0).alias("price")), config, vocab)
    np.testing.assert_array_equal(np.nan_to_num(x1, nan=-1), np.nan_to_num(x2, nan=-1))
    assert rows["units"].to_list() != again["units"].to_list()  # the targets did change
    # The lags are the periods just before the origin, most recent first.
    first = rows.filter(pl.col("item_id") == "i0").row(0, named=True)
    before = panel.filter((pl.col("item_id") == "i0") & (pl.col("period") < origin)).sort("period", descending=True)
    assert [first[f"y_{k}"] for k in range(1, 15)] == before["units"].head(14).to_list()


@pytest.mark.fast
def test_floors_and_metrics():
    panel = _panel(days=30, items=2)
    origin = panel["period"].min() + DAY * 21
    config = fc.ForecastConfig("day", 7, 14, 7)
    rows = demand.forecast_rows(panel, [origin], 7, 14, "day")
    y, _ = demand.as_arrays(rows, 14)
    np.testing.assert_array_equal(fc.naive(rows, config), y[:, 0])
    seasonal, fallbacks = fc.seasonal_naive(rows, config)
    h = rows["h"].to_numpy()
    np.testing.assert_array_equal(seasonal, y[np.arange(len(h)), 7 - h])  # the same weekday a week before
    assert fallbacks == 0
    assert fc.croston_sba(np.array([0, 0, 4, 0, 0, 4, 0, 0, 4.0])) == pytest.approx((1 - 0.05) * 4 / 3, rel=0.05)
    assert fc.wape(np.array([2.0, 0.0, 2.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx(0.5)
    ets = fc.ets(rows, config)
    assert ets.shape == (rows.height,) and (ets >= 0).all()


@pytest.mark.fast
def test_the_gate_compares_wape_on_resampled_items():
    import pandas as pd

    from pipeline.families.price.evaluation import gate_statistic
    from pipeline.lifecycle.gate import Policy, Rows, decide

    rng = np.random.default_rng(0)
    items = np.repeat(np.arange(200), 4)
    actual = rng.poisson(5, items.size).astype(float)
    good = np.abs(actual - (actual + rng.normal(0, 1, items.size)))
    bad = np.abs(actual - (actual + rng.normal(0, 3, items.size)))
    column, stat = gate_statistic("wape", pd.DataFrame({"label": actual}))
    assert column == "abs_error"
    everything = np.arange(items.size)
    assert stat(good, everything) == pytest.approx(good.sum() / actual.sum())
    policy = Policy(metric="wape", higher_is_better=False, floors=("naive",), bootstrap_samples=300)
    wapes = {"wape": stat(good, everything)}
    d = decide(
        policy,
        wapes,
        {"naive": stat(bad, everything)},
        rows=Rows(items, good, stat, baselines={"naive": bad}, clusters="items"),
    )
    assert d.passed, d.reasons
    assert "over 200 items" in d.reasons[0]
    worse = decide(
        policy,
        {"wape": stat(bad, everything)},
        {"naive": stat(good, everything)},
        rows=Rows(items, bad, stat, baselines={"naive": good}),
    )
    assert not worse.passed and worse.strongest_floor == "naive"


@pytest.mark.fast
def test_a_price_stays_inside_what_was_seen_and_one_step():
    policy = PricingPolicy(max_change=0.1)
    elastic = {"elasticity": -3.0, "low": -3.4, "high": -2.6, "source": "item"}
    seen = {"min_price": 8.0, "max_price": 12.0, "distinct_prices": 4}
    cut = recommend("a", 10.0, 5.0, elastic, seen, policy)
    assert cut["price"] == 9.0  # elastic demand: revenue rises as the price falls, one step at most
    assert cut["searched"] == [9.0, 11.0] and cut["expected_demand"] == pytest.approx(5.0 * 0.9**-3.0)
    inelastic = {"elasticity": -0.5, "low": -0.8, "high": -0.2, "source": "category"}
    assert (
        recommend("a", 10.0, 5.0, inelastic, {**seen, "max_price": 10.5}, policy)["price"] == 10.5
    )  # the highest price seen
    # With a cost, the margin's optimum: p* = cost * e / (1 + e) = 6 * 1.5 = 9 for e = -3, inside the range.
    margin = recommend("a", 10.0, 5.0, elastic, seen, PricingPolicy(max_change=0.5, grid_points=401), cost=6.0)
    assert margin["objective"] == "margin" and margin["price"] == pytest.approx(9.0, abs=0.02)
    once = recommend("a", 10.0, 5.0, elastic, {"min_price": 10.0, "max_price": 10.0, "distinct_prices": 1}, policy)
    assert once["price"] is None and "only 1 price observed" in once["reason"]
    flat = recommend("a", 10.0, 5.0, {"elasticity": 0.2, "low": -0.5, "high": 0.9, "source": "item"}, seen, policy)
    assert flat["price"] is None and "does not show demand falling" in flat["reason"]


@pytest.mark.fast
def test_request_schemas_name_the_field():
    from pydantic import ValidationError

    from pipeline.families.price.serving import ForecastRequest, PriceRequest

    with pytest.raises(ValidationError, match=r"costs\.a: must not be negative"):
        PriceRequest(item_ids=["a"], costs={"a": -1.0})
    with pytest.raises(ValidationError, match="horizon"):
        ForecastRequest(item_ids=["a"], horizon=0)
    with pytest.raises(ValidationError, match="not both"):
        ForecastRequest()
    with pytest.raises(ValidationError, match=r"prices\.a: must be above zero"):
        ForecastRequest(item_ids=["a"], prices={"a": 0.0})


@pytest.mark.slow  # about 45 s (240 days of a shop): make test-slow (not in CI)
def test_elasticities_are_recovered_on_the_generated_shop(tmp_path, capsys):
    """Double ML recovers the generator's true elasticities (mean absolute error at most 0.15); a
    naive log-log regression on the same rows does visibly worse (the shop reprices along demand
    trends and aims promotions at declining items)."""
    from benchmarks.bench_price import elasticity_errors, forecast_benchmark, generated_shop

    events, catalog, truth = generated_shop(tmp_path)
    figures = forecast_benchmark(events, catalog, "day", 60, 1, 7, 7, 28, 7)
    errors = elasticity_errors(figures, truth)
    with capsys.disabled():
        print(
            f"\nelasticity MAE over {errors['items']} items: double ML {errors['dml_mae']:.3f} "
            f"(95% intervals hold {errors['coverage_95']:.0%}), naive log-log {errors['naive_mae']:.3f}"
        )
    assert errors["items"] == 60
    assert errors["dml_mae"] <= 0.15
    assert errors["naive_mae"] >= 2 * errors["dml_mae"]
    assert errors["coverage_95"] >= 0.8


@pytest.fixture(scope="module")
def price_shop(tmp_path_factory):
    """A published ten-day shop and the price family retrained on it: trained, evaluated, gated,
    registered, packaged (parity and smoke test), promoted."""
    import dataclasses

    from conftest import published_shop
    from pipeline.core.params import GenerateParams, load_params
    from pipeline.lifecycle.gate import load_policy
    from pipeline.lifecycle.steps import retrain

    with published_shop(
        tmp_path_factory.mktemp("price"),
        GenerateParams(
            seed=5, start_date="2026-10-01", days=10, events_per_day=5000, initial_users=2000, initial_items=1200
        ),
    ) as paths:
        policy = dataclasses.replace(load_policy("price"), bootstrap_samples=200)
        promoted = retrain(paths, load_params(), "price", policy=policy)
        yield paths, promoted


def test_the_price_family_goes_through_every_step_and_serves(price_shop):
    import httpx

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.serving.package import served

    paths, promoted = price_shop
    client = mlflow_client(paths)
    champion = alias_version(client, "price", CHAMPION)
    assert champion is not None and str(champion.version) == str(promoted["version"])
    run = client.get_run(champion.run_id)
    # The gate compared WAPE with the floors on the same rows, resampling items.
    assert "over" in run.data.tags["gate.reasons"] and "items" in run.data.tags["gate.reasons"]
    for floor in ("naive", "seasonal_naive", "ets"):
        assert f"eval_baseline_{floor}_wape" in run.data.metrics
    assert run.data.metrics["backtest_lightgbm_wape"] > 0
    assert champion.tags["smoke_test"] == "passed"
    with (
        served(paths, champion.tags["bento_tag"], env={"SHOPML_PREDICTION_LOG": "off"}) as url,
        httpx.Client(timeout=30) as http,
    ):
        meta = http.post(f"{url}/metadata", json={}).json()
        items = meta["items_sample"]
        assert meta["model"] == "price" and meta["horizon"] == 2 and meta["period"] == "day"
        answer = http.post(f"{url}/forecast", json={"item_ids": items[:3]}).json()
        assert [(f["item_id"], f["h"]) for f in answer["forecasts"]] == [(i, h) for i in items[:3] for h in (1, 2)]
        assert all(f["units"] >= 0 for f in answer["forecasts"])
        # A planned price changes the forecast of that item only.
        cheaper = {items[0]: answer["forecasts"][0]["price"] * 0.7}
        planned = http.post(f"{url}/forecast", json={"item_ids": items[:2], "prices": cheaper}).json()["forecasts"]
        assert planned[0]["price"] == pytest.approx(cheaper[items[0]])
        assert [f["units"] for f in planned[2:]] == [f["units"] for f in answer["forecasts"][2:4]]
        prices = http.post(f"{url}/price", json={"item_ids": items[:5], "costs": {items[0]: 0.5}}).json()["prices"]
        assert len(prices) == 5 and all(p["price"] is not None or p["reason"] for p in prices)
        # The sample starts with items sold at several prices: none is turned down for having one,
        # and a price given lies inside the range it sold at.
        assert all(p["observed_range"][0] < p["observed_range"][1] for p in prices), prices
        priced = [p for p in prices if p["price"] is not None]
        assert all(p["observed_range"][0] <= p["price"] <= p["observed_range"][1] for p in priced), priced
        for body, field in (
            ({"item_ids": items[:1], "horizon": 3}, "horizon"),
            ({"item_ids": ["no-such-item"]}, "item_ids[0]"),
            ({"item_ids": items[:1], "rows": []}, "rows"),
        ):
            response = http.post(f"{url}/forecast", json=body)
            assert response.status_code == 400 and field in response.text, (body, response.text)
        response = http.post(f"{url}/price", json={"item_ids": items[:1], "costs": {items[0]: -2}})
        assert response.status_code == 400 and f"costs.{items[0]}" in response.text
        response = http.post(f"{url}/price", json={"item_ids": ["no-such-item"]})
        assert response.status_code == 400 and "item_ids[0]" in response.text
