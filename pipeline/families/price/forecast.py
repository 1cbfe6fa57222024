"""The demand forecaster (one LightGBM model over every item), its floors, its metrics, the backtest.

Features are computed from a forecasting row alone (``demand.forecast_rows``): the lags, their
rolling means, spread, zero share and exponential smoothing, the seasonal lag for the row's step,
the periods since the last sale, the target's calendar, its price against the item's own recent
prices and against its category's, the promotion flag, the step, and the item and its category as
categorical features. So training, the backtest, the gate's test rows and the served ``/forecast``
all compute them the same way.

Floors, on the same rows: ``naive`` (the last period), ``seasonal_naive`` (the same period one
season before; the last period where the history is shorter than a season) and ``ets``
(exponential smoothing per item, ``statsmodels``; Croston's method, SBA variant, for an item whose
history is intermittent).

Metrics: WAPE (sum of absolute errors over sum of actual units, all rows pooled) and RMSSE (per
item and origin, the root mean squared error over the horizon scaled by the in-sample mean squared
one-step change of the item's history, M5's scale; averaged over items unweighted).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from pipeline.families.price.demand import PERIODS, PROMO_DISCOUNT, as_arrays, forecast_rows

log = logging.getLogger(__name__)

SEASON = {"day": 7, "week": 52}
ROLLING = (2, 4, 8, 13, 26)
FLOORS = ("naive", "seasonal_naive", "ets")
INTERMITTENT_ADI = 1.32


@dataclass(frozen=True)
class ForecastConfig:
    period: str
    horizon: int
    history: int
    season: int
    objective: str = "tweedie"  # or l1: the median, which WAPE rewards
    rounds: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 40
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _nan_mean(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def feature_matrix(
    rows: pl.DataFrame, config: ForecastConfig, vocab: dict[str, dict[str, int]]
) -> tuple[np.ndarray, list[str]]:
    """The model's inputs for forecasting rows, and their names."""
    y, p = as_arrays(rows, config.history)
    n = rows.height
    cols: dict[str, np.ndarray] = {}
    for k in range(min(8, config.history)):
        cols[f"lag_{k + 1}"] = y[:, k]
    for w in ROLLING:
        if w <= config.history:
            cols[f"mean_{w}"] = _nan_mean(y[:, :w])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cols["std_8"] = np.nanstd(y[:, : min(8, config.history)], axis=1)
        cols["zero_share_8"] = np.nanmean(np.where(np.isnan(y[:, :8]), np.nan, y[:, :8] <= 0), axis=1)
    for alpha in (0.5, 0.2):
        cols[f"ewm_{alpha}"] = _ewm(y, alpha)
    known = ~np.isnan(y)
    cols["history_periods"] = known.sum(axis=1).astype(float)
    sold = np.where(known, y > 0, False)
    cols["periods_since_sale"] = np.where(sold.any(axis=1), sold.argmax(axis=1), config.history).astype(float)
    h = rows["h"].to_numpy().astype(int)
    season = config.season
    seasonal = np.full(n, np.nan)
    ok = (season >= h) & (season - h < config.history)
    idx = np.clip(season - h, 0, config.history - 1)
    seasonal[ok] = y[np.flatnonzero(ok), idx[ok]]
    cols["seasonal_lag"] = seasonal
    price = rows["price"].to_numpy().astype(float)
    recent = _nan_mean(p[:, :4])
    longer = _nan_mean(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["log_price"] = np.log(price)
        cols["price_vs_recent"] = np.log(price / recent)
        cols["price_vs_history"] = np.log(price / longer)
        cols["price_vs_last"] = np.log(price / p[:, 0])
        cols["price_vs_category"] = np.log(price / rows["category_price"].to_numpy().astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        regular = np.nanmedian(p[:, : min(8, config.history)], axis=1)
    cols["promo"] = (price < regular * (1 - PROMO_DISCOUNT)).astype(float)
    cols["h"] = h.astype(float)
    target = rows["target_period"]
    if config.period == "day":
        cols["weekday"] = target.dt.weekday().to_numpy().astype(float)
        cols["month_day"] = target.dt.day().to_numpy().astype(float)
    else:
        cols["week_of_year"] = target.dt.week().to_numpy().astype(float)
    cols["month"] = target.dt.month().to_numpy().astype(float)
    cols["item"] = np.array([vocab["item"].get(i, -1) for i in rows["item_id"].to_list()], dtype=float)
    cols["category"] = np.array([vocab["category"].get(c, -1) for c in rows["category"].to_list()], dtype=float)
    names = list(cols)
    matrix = np.column_stack([cols[c] for c in names]).astype(np.float64)
    matrix[~np.isfinite(matrix)] = np.nan
    return matrix, names


CATEGORICAL = ("item", "category")


def _ewm(y: np.ndarray, alpha: float) -> np.ndarray:
    """Exponentially weighted mean of each row's known lags (column 0 the most recent)."""
    weights = alpha * (1 - alpha) ** np.arange(y.shape[1])
    known = ~np.isnan(y)
    total = (np.where(known, y, 0.0) * weights).sum(axis=1)
    mass = (known * weights).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, total / mass, np.nan)


def make_vocab(rows: pl.DataFrame) -> dict[str, dict[str, int]]:
    items = sorted(rows["item_id"].unique().to_list())
    categories = sorted(rows["category"].unique().to_list())
    return {"item": {v: i for i, v in enumerate(items)}, "category": {v: i for i, v in enumerate(categories)}}


@dataclass
class Forecaster:
    """A fitted LightGBM forecaster with its vocabulary and configuration."""

    booster: Any  # a lightgbm Booster
    config: ForecastConfig
    vocab: dict[str, dict[str, int]]
    names: list[str] = field(default_factory=list)

    def predict(self, rows: pl.DataFrame) -> np.ndarray:
        x, _ = feature_matrix(rows, self.config, self.vocab)
        return np.clip(self.booster.predict(x, num_threads=1 if len(x) < 256 else 0), 0.0, None)

    def to_dict(self) -> dict:
        return {"booster": self.booster.model_to_string(), "config": self.config.to_dict(), "vocab": self.vocab}

    @classmethod
    def from_dict(cls, data: dict) -> Forecaster:
        import lightgbm as lgb

        config = ForecastConfig(**data["config"])
        return cls(lgb.Booster(model_str=data["booster"]), config, data["vocab"])


def _lgb_params(config: ForecastConfig) -> dict:
    params = {
        "objective": config.objective,
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
        "num_threads": 0,
    }
    if config.objective == "tweedie":
        params["tweedie_variance_power"] = 1.2
    return params


def fit_forecaster(
    rows: pl.DataFrame, config: ForecastConfig, valid: pl.DataFrame | None = None, vocab: dict | None = None
) -> tuple[Forecaster, int]:
    """LightGBM on training rows (targets clipped at zero: net demand below zero is returns of
    earlier sales); with ``valid``, early stopping on it. Returns the model and its rounds."""
    import lightgbm as lgb

    vocab = vocab or make_vocab(rows)
    x, names = feature_matrix(rows, config, vocab)
    y = np.clip(rows["units"].to_numpy().astype(float), 0.0, None)
    categorical = [names.index(c) for c in CATEGORICAL]
    train = lgb.Dataset(x, y, feature_name=names, categorical_feature=categorical, free_raw_data=False)
    params = _lgb_params(config)
    if valid is not None and valid.height:
        xv, _ = feature_matrix(valid, config, vocab)
        yv = np.clip(valid["units"].to_numpy().astype(float), 0.0, None)
        vset = lgb.Dataset(xv, yv, reference=train, categorical_feature=categorical)
        booster = lgb.train(
            {**params, "metric": "l1"},
            train,
            num_boost_round=config.rounds * 3,
            valid_sets=[vset],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        rounds = max(int(booster.best_iteration or config.rounds), 20)
    else:
        booster = lgb.train(params, train, num_boost_round=config.rounds)
        rounds = config.rounds
    return Forecaster(booster, config, vocab, names), rounds


# Floors ------------------------------------------------------------------------------------------


def naive(rows: pl.DataFrame, config: ForecastConfig) -> np.ndarray:
    y, _ = as_arrays(rows, config.history)
    return np.nan_to_num(y[:, 0], nan=0.0).clip(0)


def seasonal_naive(rows: pl.DataFrame, config: ForecastConfig) -> tuple[np.ndarray, int]:
    """The same period one season before the target; the last period where that is not in the
    history. Returns the forecasts and how many rows fell back."""
    y, _ = as_arrays(rows, config.history)
    h = rows["h"].to_numpy().astype(int)
    idx = config.season - h
    ok = (idx >= 0) & (idx < config.history)
    out = np.nan_to_num(y[:, 0], nan=0.0)
    value = y[np.flatnonzero(ok), idx[ok]]
    known = ~np.isnan(value)
    out[np.flatnonzero(ok)[known]] = value[known]
    return out.clip(0), int(rows.height - known.sum())


def croston_sba(series: np.ndarray, alpha: float = 0.1) -> float:
    """Croston's forecast with the Syntetos-Boylan bias correction: smoothed demand size over
    smoothed interval, times (1 - alpha / 2). Hand-written: statsmodels has no Croston, and
    statsforecast (which has) requires pandas < 3, which would move this project's pinned pandas."""
    nonzero = np.flatnonzero(series > 0)
    if nonzero.size == 0:
        return 0.0
    size, interval, last = float(series[nonzero[0]]), float(nonzero[0] + 1), nonzero[0]
    for t in nonzero[1:]:
        size += alpha * (series[t] - size)
        interval += alpha * ((t - last) - interval)
        last = t
    return (1 - alpha / 2) * size / interval


def ets_forecast(series: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Exponential smoothing of one item's history (chronological, no gaps): simple exponential
    smoothing, with an additive season when two whole seasons are known (daily data); Croston
    (SBA) when the history is intermittent. Never below zero."""
    series = np.clip(series, 0.0, None)
    n = series.size
    if n == 0:
        return np.zeros(horizon)
    nonzero = int((series > 0).sum())
    if nonzero == 0:
        return np.zeros(horizon)
    if n / nonzero >= INTERMITTENT_ADI or n < 4:
        return np.full(horizon, croston_sba(series))
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    seasonal = "add" if season <= 12 and n >= 2 * season else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = ExponentialSmoothing(
                series,
                trend=None,
                seasonal=seasonal,
                seasonal_periods=season if seasonal else None,
                initialization_method="estimated",
            ).fit()
            out = np.asarray(fit.forecast(horizon), dtype=float)
        except (ValueError, np.linalg.LinAlgError):
            out = np.full(horizon, series[-min(n, 4) :].mean())
    return np.nan_to_num(out, nan=float(series.mean())).clip(0)


def ets(rows: pl.DataFrame, config: ForecastConfig) -> np.ndarray:
    """``ets_forecast`` per (item, origin), on the known part of the row's lags."""
    y, _ = as_arrays(rows, config.history)
    keys = rows.select("item_id", "origin").with_row_index("_row")
    out = np.zeros(rows.height)
    h = rows["h"].to_numpy().astype(int)
    for _, group in keys.group_by("item_id", "origin", maintain_order=True):
        idx = group["_row"].to_numpy()
        history = y[idx[0]][::-1]
        history = history[~np.isnan(history)]
        forecast = ets_forecast(history, int(h[idx].max()), config.season)
        out[idx] = forecast[h[idx] - 1]
    return out


def floor_forecasts(rows: pl.DataFrame, config: ForecastConfig) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    sn, fallbacks = seasonal_naive(rows, config)
    return {"naive": naive(rows, config), "seasonal_naive": sn, "ets": ets(rows, config)}, {"seasonal_naive": fallbacks}


# Metrics -----------------------------------------------------------------------------------------


def wape(actual: np.ndarray, forecast: np.ndarray) -> float:
    total = float(np.abs(actual).sum())
    return float(np.abs(actual - forecast).sum() / total) if total > 0 else float("nan")


def rmsse(rows: pl.DataFrame, forecast: np.ndarray, config: ForecastConfig) -> float:
    """Mean over (item, origin) of sqrt(mean squared error / mean squared one-step change of the
    item's history); series whose history never changes are left out (their scale is zero)."""
    per = rmsse_per_series(rows, forecast, config)
    return float(np.nanmean(per)) if per.size and np.isfinite(per).any() else float("nan")


def rmsse_per_series(rows: pl.DataFrame, forecast: np.ndarray, config: ForecastConfig) -> np.ndarray:
    y, _ = as_arrays(rows, config.history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmean(np.diff(y[:, ::-1], axis=1) ** 2, axis=1)
    frame = pl.DataFrame(
        {
            "item_id": rows["item_id"],
            "origin": rows["origin"],
            "se": (rows["units"].to_numpy().astype(float) - forecast) ** 2,
            "scale": scale,
        }
    )
    per = frame.group_by("item_id", "origin").agg(pl.col("se").mean(), pl.col("scale").first())
    per = per.filter(pl.col("scale") > 0)
    return np.sqrt(per["se"].to_numpy() / per["scale"].to_numpy())


def forecast_metrics(
    rows: pl.DataFrame, forecast: np.ndarray, config: ForecastConfig, classes: dict[str, str]
) -> dict[str, float]:
    """WAPE and RMSSE overall and per item class (fast, slow, intermittent)."""
    actual = rows["units"].to_numpy().astype(float)
    out = {"wape": wape(actual, forecast), "rmsse": rmsse(rows, forecast, config), "rows": float(rows.height)}
    kinds = np.array([classes.get(i, "new") for i in rows["item_id"].to_list()])
    for kind in ("fast", "slow", "intermittent"):
        mask = kinds == kind
        if mask.any():
            part = rows.filter(pl.Series(mask))
            out[f"wape.{kind}"] = wape(actual[mask], forecast[mask])
            out[f"rmsse.{kind}"] = rmsse(part, forecast[mask], config)
    return out


# Backtest ----------------------------------------------------------------------------------------


@dataclass
class Backtest:
    origins: list[datetime]
    metrics: dict[str, dict[str, float]]  # model -> metrics over all origins
    per_origin: list[dict]
    rounds: int
    objective: str
    seconds: float
    fallbacks: int


def training_rows(
    panel: pl.DataFrame, config: ForecastConfig, before: datetime, first_origin: datetime
) -> pl.DataFrame:
    """Rows of every origin from ``first_origin`` whose target lies before ``before``."""
    step = PERIODS[config.period]
    origins, t = [], first_origin
    while t < before:
        origins.append(t)
        t += step
    rows = forecast_rows(panel, origins, config.horizon, config.history, config.period)
    return rows.filter(pl.col("target_period") < before)


def choose_settings(
    panel: pl.DataFrame, config: ForecastConfig, first_origin: datetime, valid_origin: datetime
) -> ForecastConfig:
    """The objective (tweedie or l1) and the number of rounds, chosen on the rows of one validation
    origin (trained on what lies before it), by WAPE, never on a test origin."""
    from dataclasses import replace

    train = training_rows(panel, config, valid_origin, first_origin)
    valid = forecast_rows(panel, [valid_origin], config.horizon, config.history, config.period)
    vocab = make_vocab(panel)
    best = None
    for objective in ("tweedie", "l1"):
        candidate = replace(config, objective=objective)
        model, rounds = fit_forecaster(train, candidate, valid, vocab)
        score = wape(valid["units"].to_numpy().astype(float), model.predict(valid))
        log.info("validation origin %s: %s, %d rounds, WAPE %.4f", valid_origin.date(), objective, rounds, score)
        if best is None or score < best[0]:
            best = (score, replace(candidate, rounds=rounds))
    assert best is not None
    return best[1]


def backtest(
    panel: pl.DataFrame,
    config: ForecastConfig,
    origins: list[datetime],
    first_origin: datetime,
    classes: dict[str, str],
) -> tuple[Backtest, dict[str, np.ndarray], pl.DataFrame]:
    """Rolling-origin evaluation: at each origin the forecaster is trained on every row whose target
    lies before it and forecasts ``horizon`` periods; the floors forecast the same rows. Returns the
    figures, each model's forecasts and the rows, all origins stacked."""
    import time

    start = time.perf_counter()
    vocab = make_vocab(panel)
    forecasts: dict[str, list[np.ndarray]] = {"lightgbm": [], **{f: [] for f in FLOORS}}
    parts, per_origin, fallbacks = [], [], 0
    for origin in origins:
        train = training_rows(panel, config, origin, first_origin)
        test = forecast_rows(panel, [origin], config.horizon, config.history, config.period)
        model, _ = fit_forecaster(train, config, None, vocab)
        predicted = {"lightgbm": model.predict(test)}
        floors, fb = floor_forecasts(test, config)
        fallbacks += fb["seasonal_naive"]
        predicted.update(floors)
        actual = test["units"].to_numpy().astype(float)
        per_origin.append({"origin": origin.isoformat(), **{m: wape(actual, f) for m, f in predicted.items()}})
        for m, f in predicted.items():
            forecasts[m].append(f)
        parts.append(test)
        log.info("origin %s: %s", origin.date(), ", ".join(f"{m} {per_origin[-1][m]:.3f}" for m in predicted))
    rows = pl.concat(parts)
    stacked = {m: np.concatenate(f) for m, f in forecasts.items()}
    metrics = {m: forecast_metrics(rows, f, config, classes) for m, f in stacked.items()}
    result = Backtest(
        origins, metrics, per_origin, config.rounds, config.objective, time.perf_counter() - start, fallbacks
    )
    return result, stacked, rows


def improvement(metrics: dict[str, dict[str, float]], model: str = "lightgbm") -> tuple[str, float]:
    """The best floor by WAPE and the model's WAPE below it, as a share of the floor's."""
    best = min(FLOORS, key=lambda f: metrics[f]["wape"])
    return best, 1 - metrics[model]["wape"] / metrics[best]["wape"] if math.isfinite(metrics[best]["wape"]) else float(
        "nan"
    )
