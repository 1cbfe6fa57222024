"""How a demand forecaster is judged: WAPE and RMSSE on the test period's origins, the floors beside.

The test rows are every (item, origin, step) whose origin lies in the run's test period (from
``split.valid_end``, one origin per period while a whole horizon fits before the data's end),
features from before each origin only. The model is the one trained before the test period: it is
not retrained at each origin, as a served model is not. The floors (``naive``, ``seasonal_naive``,
``ets``) forecast the same rows from the same inputs. The gate compares WAPE, resampling items.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.integrity import baseline_file
from pipeline.data.dataset import Dataset, TimeSplit
from pipeline.families.base import (
    ModelScores,
    TestSet,
    compare_served,
    latency_p95,
    parity_users,
    per_slice,
    predict_batches,
)
from pipeline.families.price import forecast as fc
from pipeline.families.price.demand import PERIODS, forecast_rows, item_classes, lag_names, origins_between, top_items
from pipeline.families.price.features import whole_periods
from pipeline.families.spec import ParityOutcome, Post

FORECAST_TOLERANCE = 1e-6  # |served - evaluated| units: the same booster on the same inputs
ROWS_PER_REQUEST = 25
TOP_CATEGORIES = 5


def config_from_run(run_params: dict[str, str]) -> fc.ForecastConfig:
    """The shape of the run's rows (``data.*`` params, which a floor's run copies too)."""
    return fc.ForecastConfig(
        run_params["data.period"],
        int(run_params["data.horizon"]),
        int(run_params["data.history"]),
        int(run_params["data.season"]),
    )


def panel_of_run(dataset: Dataset, split: TimeSplit, run_params: dict[str, str]) -> pl.DataFrame:
    """The run's panel rebuilt from its dataset version: the same best sellers (counted before
    ``split.train_end``), every whole period up to the split's end."""
    from pipeline.data.dataset import split_by_time
    from pipeline.families.price.demand import demand_panel

    events = dataset.events()
    period = run_params["data.period"]
    full = whole_periods(
        demand_panel(events, dataset.catalog_history(), period), split_by_time(events, 0, 0).end, period
    )
    full = full.filter(pl.col("period") < split.end)
    items = top_items(full, int(run_params["data.items"]), before=split.train_end)
    return full.filter(pl.col("item_id").is_in(items))


def test_rows(panel: pl.DataFrame, split: TimeSplit, config: fc.ForecastConfig) -> pl.DataFrame:
    step = PERIODS[config.period]
    last = split.end - step * config.horizon
    origins = origins_between(split.valid_end, last, config.period)
    if not origins:
        raise BadInput(f"the test period ({split.valid_end:%Y-%m-%d} to {split.end:%Y-%m-%d}) holds no whole horizon")
    rows = forecast_rows(panel, origins, config.horizon, config.history, config.period)
    return rows.filter(pl.col("target_period") < split.end)


def test_set(dataset: Dataset, split: TimeSplit, run_params: dict[str, str]) -> TestSet:
    from pipeline.families.price.pyfunc import rows_to_inputs

    config = config_from_run(run_params)
    panel = panel_of_run(dataset, split, run_params)
    rows = test_rows(panel, split, config)
    classes = item_classes(panel, split.train_end)
    top = (
        panel.filter(pl.col("period") < split.train_end)
        .group_by("category")
        .agg(pl.col("units").sum())
        .sort(["units", "category"], descending=[True, False])
        .head(TOP_CATEGORIES)["category"]
        .to_list()
    )
    slices = pd.DataFrame(
        {
            "item_class": [classes.get(i, "new") for i in rows["item_id"].to_list()],
            "category": [c if c in top else "other" for c in rows["category"].to_list()],
            "step": [f"h{h}" for h in rows["h"].to_list()],
        }
    )
    return TestSet(
        inputs=rows_to_inputs(rows, config.history),
        users=rows["item_id"].to_numpy().astype(object),  # the bootstrap resamples items
        slices=slices,
        labels=rows["units"].to_numpy().astype(np.float64),
        context={"config": config, "rows": rows},
    )


def _metrics(test: TestSet, forecast: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    rows: pl.DataFrame = test.context["rows"]
    actual = test.labels
    assert actual is not None
    if mask is not None:
        rows, actual, forecast = rows.filter(pl.Series(mask)), actual[mask], forecast[mask]
    total = float(np.abs(actual).sum())
    return {
        "wape": fc.wape(actual, forecast),
        "rmsse": fc.rmsse(rows, forecast, test.context["config"]),
        "bias": float((forecast - actual).sum() / total) if total else float("nan"),
    }


def _scores(test: TestSet, forecast: np.ndarray, latency: float = float("nan"), predictions=None) -> ModelScores:
    forecast = np.asarray(forecast, dtype=np.float64)
    assert test.labels is not None
    return ModelScores(
        _metrics(test, forecast),
        {"abs_error": np.abs(test.labels - forecast), "forecast": forecast},
        per_slice(test, lambda m: _metrics(test, forecast, m)),
        latency,
        predictions,
    )


def score(model, test: TestSet, batch: int = 20_000) -> ModelScores:
    predictions = predict_batches(model, test.inputs, batch)
    return _scores(
        test, predictions["forecast"].to_numpy(dtype=np.float64), latency_p95(model, test.inputs), predictions
    )


def baselines(client, run_id: str, test: TestSet, tmp: Path) -> dict[str, ModelScores]:
    """The floors on the same rows, from the same inputs (nothing to load from the run)."""
    floors, _ = fc.floor_forecasts(test.context["rows"], test.context["config"])
    return {name: _scores(test, forecast) for name, forecast in floors.items()}


def gate_statistic(metric: str, rows: pd.DataFrame):
    """WAPE: the resampled rows' absolute errors over their actual units (a ratio of sums, not a
    mean of ratios); RMSSE is reported, not gated on."""
    if metric != "wape":
        return None
    if "label" not in rows:
        raise BadInput("metric wape needs the evaluation's actual units (evaluation/rows.parquet has no label column)")
    actual = np.abs(rows["label"].to_numpy(dtype=float))

    def statistic(values: np.ndarray, at: np.ndarray) -> float:
        total = actual[at].sum()
        return float(values.sum() / total) if total > 0 else float("nan")

    return "abs_error", statistic


# Serving checks ----------------------------------------------------------------------------------


def _row_body(row: dict, history: int) -> dict:
    ys, ps = lag_names(history)
    return {
        "item_id": row["item_id"],
        "category": row["category"],
        "category_price": _number(row["category_price"]),
        "origin": row["origin"],
        "target_period": row["target_period"],
        "h": int(row["h"]),
        "price": _number(row["price"]),
        "units_history": [_number(row[c]) for c in ys],
        "price_history": [_number(row[c]) for c in ps],
    }


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and not np.isfinite(value)) else float(value)


def history_of(expected: pd.DataFrame) -> int:
    return sum(1 for c in expected.columns if c.startswith("y_") and c[2:].isdigit())


def parity(post: Post, expected: pd.DataFrame) -> ParityOutcome:
    """Replay the evaluated rows, ``ROWS_PER_REQUEST`` per request, against ``/forecast`` (rows sent
    whole): every forecast within ``FORECAST_TOLERANCE`` of the offline one."""
    history = history_of(expected)
    records = expected.to_dict("records")
    chunks = [records[i : i + ROWS_PER_REQUEST] for i in range(0, len(records), ROWS_PER_REQUEST)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: post("forecast", {"rows": [_row_body(r, history) for r in c]}), chunks))
    served = np.concatenate([np.asarray([f["units"] for f in a["forecasts"]], dtype=float) for a, _ in answers])
    return compare_served(
        served,
        expected["predicted_forecast"].to_numpy(dtype=float),
        FORECAST_TOLERANCE,
        answers,
        lambda i: f"item {expected['item_id'].iloc[i]} origin {expected['origin'].iloc[i]} h {expected['h'].iloc[i]}",
    )


def item_parity(post: Post, python_model, dataset: Dataset, n: int) -> ParityOutcome:
    """Forecasts by item id (the packaged state at the snapshot's cutoff) against the pyfunc on rows
    built offline from the same dataset with the training code path (``demand_panel`` then
    ``rows_at``), for ``n`` items spread over the model's items, every step of the horizon."""
    from pipeline.data.dataset import split_by_time
    from pipeline.families.price.demand import demand_panel, next_origin, rows_at

    config = python_model.config
    events = dataset.events()
    panel = whole_periods(
        demand_panel(events, dataset.catalog_history(), config.period), split_by_time(events, 0, 0).end, config.period
    )
    items = parity_users(sorted(python_model.items & set(panel["item_id"].unique().to_list())), n)
    rows = rows_at(panel, next_origin(panel, config.period), config.horizon, config.history, config.period)
    rows = rows.filter(pl.col("item_id").is_in(items)).sort("item_id", "h")
    expected = python_model.forecast(rows)
    bodies = [
        {"item_ids": items[i : i + ROWS_PER_REQUEST], "horizon": config.horizon}
        for i in range(0, len(items), ROWS_PER_REQUEST)
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post("forecast", b), bodies))
    served_map = {(f["item_id"], f["h"]): f["units"] for a, _ in answers for f in a["forecasts"]}
    keys = list(zip(rows["item_id"].to_list(), rows["h"].to_list(), strict=True))
    served = np.array([served_map.get(k, np.nan) for k in keys], dtype=float)
    return compare_served(
        served, expected, FORECAST_TOLERANCE, answers, lambda i: f"item {keys[i][0]} h {keys[i][1]}", "offline"
    )


def smoke_checks(post: Post) -> list[str]:
    """``/price`` answers for the served items, and says why where it recommends nothing."""
    meta, _ = post("metadata", {})
    items = meta.get("items_sample") or []
    if not items:
        raise ValueError("metadata names no served item (items_sample)")
    answer, ms = post("price", {"item_ids": items[:5]})
    prices = answer["prices"]
    if len(prices) != len(items[:5]):
        raise ValueError(f"/price answered {len(prices)} items for {len(items[:5])} asked")
    for p in prices:
        if p["price"] is None and not p.get("reason"):
            raise ValueError(f"/price recommended nothing for {p['item_id']} and gave no reason")
        if p["price"] is not None and not (p["searched"][0] - 1e-6 <= p["price"] <= p["searched"][1] + 1e-6):
            raise ValueError(f"/price recommended {p['price']} for {p['item_id']}, outside {p['searched']}")
    given = sum(p["price"] is not None for p in prices)
    return [f"price: {given} of {len(prices)} items priced, the rest with a reason, in {ms:.0f} ms"]


FLOORS = fc.FLOORS


def floor_model(
    name: str, dataset: Dataset, split: TimeSplit, run_params: dict[str, str], workdir, client=None, run_id: str = ""
) -> dict:
    """Floor ``name`` as the family's pyfunc (``FloorPyfunc``), with the candidate's elasticities."""
    from pipeline.core.tracking import REPO_ROOT
    from pipeline.families.price.pyfunc import FloorPyfunc

    if name not in FLOORS:
        raise ValueError(f"price has no floor model {name!r}; floors: {', '.join(FLOORS)}")
    pricing = baseline_file(client, run_id, "pricing.json", workdir)
    floor = Path(workdir) / "floor.json"
    floor.write_text(json.dumps({"floor": name}))
    return {
        "python_model": FloorPyfunc(),
        "artifacts": {"pricing": pricing, "floor": str(floor)},
        "code_paths": [str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
    }
