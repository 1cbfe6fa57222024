"""Price elasticity per item, by double machine learning, shrunk toward the item's category.

Observational prices are not random: a shop raises the price of what sells well and discounts what
does not, so a plain regression of demand on price mixes the price's effect with the reasons the
price was set. Double ML (``doubleml``'s partially linear model, cross-fitted with LightGBM)
predicts demand and price from the confounders (the forecaster's own features at each period:
recent demand, its trend and spread, recent prices, calendar, category); what is left of the price
after that prediction is what identifies the effect. Demand is multiplicative in price, so the
effect per item comes from a Poisson regression on that residual price (``estimate``).

Items with few periods or little price variation are estimated badly: each estimate is shrunk
toward its category's precision-weighted mean (an empirical-Bayes normal-normal model, the spread
of true item effects around the category by maximum likelihood), and an item whose price never
moved, or that has fewer than ``MIN_PERIODS`` periods, gets its category's value, marked as such.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.families.price.demand import forecast_rows, origins_between
from pipeline.families.price.forecast import ForecastConfig, feature_matrix, make_vocab

log = logging.getLogger(__name__)

PRICE_FEATURES = ("log_price", "price_vs_recent", "price_vs_history", "price_vs_last", "price_vs_category", "promo")
MIN_PRICE_SPREAD = 0.01  # standard deviation of log price below this: the price never really moved
MIN_PERIODS = 20  # fewer periods: one item's own regression says little; its category's value stands
# Newey-West lags of the per-item standard errors: a promotion lasts days, so neighbouring periods'
# errors are not independent, and plain robust errors would claim too much precision (and so
# shrink too little).
HAC_LAGS = 7
ITERATIONS = 3  # alternations of the baseline demand and the elasticities (the second changes little after)


@dataclass(frozen=True)
class ElasticityFit:
    """Per item: the raw DML estimate, its standard error, the shrunk value and its interval."""

    table: pl.DataFrame  # item_id, category, raw, se, elasticity, low, high, source, periods, price_spread
    overall: float
    overall_se: float
    categories: dict[str, float]
    tau: float  # spread of item effects around their category's
    rows: int

    def median(self) -> tuple[float, float, float]:
        """The median item elasticity and the medians of the items' interval ends."""
        t = self.table
        return tuple(float(t[c].cast(pl.Float64).median() or float("nan")) for c in ("elasticity", "low", "high"))  # type: ignore[return-value,arg-type]

    def to_dict(self) -> dict:
        return {
            "overall": self.overall,
            "overall_se": self.overall_se,
            "categories": self.categories,
            "tau": self.tau,
            "rows": self.rows,
            "items": self.table.to_dicts(),
        }


def dml_rows(panel: pl.DataFrame, config: ForecastConfig, first_origin, before) -> pl.DataFrame:
    """One row per (item, period) in [first_origin, before): the forecasting row of step 1 at that
    period (what was known just before it) with its units and the price of the period (the mean
    price paid, else the list price: the price the units were sold at)."""
    origins = origins_between(first_origin, before, config.period)
    rows = forecast_rows(panel, origins, 1, config.history, config.period)
    paid = panel.select("item_id", pl.col("period").alias("target_period"), pl.col("price").alias("_paid"))
    rows = (
        rows.join(paid, on=["item_id", "target_period"], how="left")
        .with_columns(pl.coalesce("_paid", "price").alias("price"))
        .drop("_paid")
    )
    return rows.filter((pl.col("target_period") < before) & pl.col("price").is_not_null() & (pl.col("price") > 0))


def confounders(rows: pl.DataFrame, config: ForecastConfig) -> np.ndarray:
    """The forecaster's features without those of the target's own price (the treatment)."""
    from pipeline.families.price.demand import as_arrays

    x, names = feature_matrix(rows, config, make_vocab(rows))
    keep = [i for i, n in enumerate(names) if n not in PRICE_FEATURES and n != "item"]
    # The past prices are confounders too: without them, past demand stands in for them (a promotion
    # that began yesterday shows as yesterday's sales) and takes part of the price's effect.
    _, p = as_arrays(rows, config.history)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.log(np.nanmean(p, axis=1))
        past = np.column_stack(
            [np.log(p[:, 0]) - level, np.log(np.nanmean(p[:, :4], axis=1)) - level, np.log(p[:, 1]) - level, level]
        )
    return np.nan_to_num(np.column_stack([x[:, keep], past]), nan=-1.0, posinf=-1.0, neginf=-1.0)


def _learner(seed: int, objective: str = "regression", smooth: bool = False):
    """LightGBM for a nuisance. ``smooth``: far fewer and larger leaves, for the price nuisance,
    whose signal is small (most price changes are not predictable): a noisy E[price | X] is
    correlated with its own residual in the sample and biases the elasticity toward zero."""
    import lightgbm as lgb

    return lgb.LGBMRegressor(
        objective=objective,
        n_estimators=50 if smooth else 300,
        learning_rate=0.05,
        num_leaves=4 if smooth else 31,
        min_child_samples=500 if smooth else 20,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=seed,
        verbose=-1,
        n_jobs=-1,
    )


def estimate(rows: pl.DataFrame, config: ForecastConfig, folds: int = 3, seed: int = 0) -> ElasticityFit:
    """Double ML elasticities of the items in ``rows`` (``dml_rows``), shrunk toward categories.

    1. ``doubleml``'s partially linear model of units on the log price change (against the item's
       last price, itself a confounder), cross-fitted: its nuisance predictions are E[units | X]
       and E[price change | X] for every row, each from a model that never saw the row. The price
       nuisance is a deliberately smooth model (``_learner(smooth=True)``): most price changes are
       not predictable, and a noisy prediction, correlated in the sample with its own residual,
       biased the estimate toward zero by about 0.2 on the generated shop.
    2. Per item, a Poisson regression of units on the residual price, with the item's own time
       trend and log h(X) as offset, where h(X) = E[units x exp(-elasticity x residual) | X] is
       refitted (cross-fitted, the same folds) with the latest elasticities, ``ITERATIONS`` times:
       at the fixed point E[units | price, X] = exp(elasticity x residual) x h(X), the
       multiplicative model itself. Standard errors are Newey-West (``HAC_LAGS``).
    3. ``overall`` is doubleml's own coefficient (a level slope) over mean units: an elasticity at
       the mean, for orientation, and the prior of a category without estimated items.
    """
    import doubleml as dml

    units = np.clip(rows["units"].to_numpy().astype(float), 0.0, None)
    # The treatment is log price against the item's last price before the period, which is among
    # the confounders: the same model (elasticity is unchanged by subtracting a function of X), but
    # a nuisance the trees learn far better (mostly zero, not an item's absolute price level), and
    # what is left of E[price | X] after the trees is what would otherwise attenuate the estimate.
    d = np.log(rows["price"].to_numpy().astype(float)) - _last_log_price(rows, config)
    x = confounders(rows, config)
    np.random.seed(seed)  # doubleml draws its sample splits from numpy's global generator
    data = dml.DoubleMLData.from_arrays(x, units, d)
    plr = dml.DoubleMLPLR(data, ml_l=_learner(seed, "poisson"), ml_m=_learner(seed, smooth=True), n_folds=folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plr.fit(store_predictions=True)
    residual = d - np.asarray(plr.predictions["ml_m"]).ravel()
    mean = float(units.mean()) or 1.0
    overall, overall_se = (
        float(plr.coef[0]) / mean,
        float(plr.se[0]) / mean,
    )  # level slope / mean: an elasticity at the mean
    items = rows["item_id"].to_numpy().astype(str)
    # Each item's own time trend stays in the second stage: a shop reprices along an item's trend,
    # and the pooled nuisance models read trends only through the lags.
    when = (rows["target_period"] - rows["target_period"].min()).dt.total_days().to_numpy().astype(float)
    stats = (
        rows.with_columns(pl.Series("_logp", d))
        .group_by("item_id")
        .agg(
            pl.len().alias("periods"),
            pl.col("_logp").std().fill_null(0.0).alias("price_spread"),
            pl.col("category").first(),
        )
    )
    movable = stats.filter((pl.col("price_spread") >= MIN_PRICE_SPREAD) & (pl.col("periods") >= MIN_PERIODS))
    wanted = set(movable["item_id"].to_list())
    order = np.argsort(items, kind="stable")
    bounds = np.flatnonzero(np.r_[True, items[order][1:] != items[order][:-1], True])
    groups = [order[a:b] for a, b in itertools.pairwise(bounds)]
    # The baseline demand h(X) = E[units * exp(-elasticity * residual price) | X], cross-fitted on
    # doubleml's own folds, and the per-item elasticities, each solved given the other: at the fixed
    # point E[units | price, X] = exp(elasticity * residual price) * h(X), the multiplicative model
    # itself. The first pass starts from E[units | X] (doubleml's outcome nuisance).
    baseline = np.clip(np.asarray(plr.predictions["ml_l"]).ravel(), 1e-3, None)
    slopes = np.zeros(units.size)
    raw: dict[str, tuple[float, float]] = {}
    for step in range(ITERATIONS):
        if step:
            baseline = _cross_fit(x, units * np.exp(-slopes * residual), plr.smpls[0], seed)
        raw = {}
        for idx in groups:
            item = items[idx[0]]
            if item in wanted and units[idx].sum() > 0:
                fitted = _poisson_slope(units[idx], residual[idx], np.log(baseline[idx]), when[idx])
                if fitted is not None:
                    raw[item] = fitted
        slopes = np.array([raw.get(i, (overall, 0.0))[0] for i in items])
    return _shrink(stats, raw, overall, overall_se, rows.height)


def _last_log_price(rows: pl.DataFrame, config: ForecastConfig) -> np.ndarray:
    from pipeline.families.price.demand import as_arrays

    _, p = as_arrays(rows, config.history)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        last = np.where(np.isfinite(p[:, 0]), p[:, 0], np.nanmean(p, axis=1))
        out = np.log(last)
    return np.where(np.isfinite(out), out, np.log(rows["price"].to_numpy().astype(float)))


def _cross_fit(x: np.ndarray, target: np.ndarray, folds, seed: int) -> np.ndarray:
    """E[target | x] for every row from a LightGBM Poisson model fitted on the other folds."""
    out = np.empty(target.size)
    for train, test in folds:
        model = _learner(seed, "poisson").fit(x[train], target[train])
        out[test] = model.predict(x[test])
    return np.clip(out, 1e-3, None)


def _poisson_slope(y: np.ndarray, t: np.ndarray, offset: np.ndarray, when: np.ndarray) -> tuple[float, float] | None:
    """Slope and Newey-West standard error of log E[y] = a + slope * t + b * when + offset
    (statsmodels GLM): ``when`` the period's time, for the item's own trend."""
    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trend = (when - when.mean()) / max(float(when.std()), 1.0)
            fit = sm.GLM(
                y,
                sm.add_constant(np.column_stack([t, trend]), has_constant="add"),
                family=sm.families.Poisson(),
                offset=offset,
            ).fit(cov_type="HAC", cov_kwds={"maxlags": HAC_LAGS})
        except (ValueError, np.linalg.LinAlgError):
            return None
    slope, se = float(fit.params[1]), float(fit.bse[1])
    return (slope, se) if np.isfinite(slope) and np.isfinite(se) and se > 0 else None


def _tau2(categories: np.ndarray, values: np.ndarray, ses: np.ndarray) -> float:
    best, best_ll = 0.02**2, -np.inf
    for tau in np.exp(np.linspace(np.log(0.02), np.log(3.0), 80)):
        var = tau**2 + ses**2
        ll = 0.0
        for c in np.unique(categories):
            inside = categories == c
            w = 1.0 / var[inside]
            mu = float((w * values[inside]).sum() / w.sum())
            ll += float(-0.5 * (np.log(var[inside]) + (values[inside] - mu) ** 2 / var[inside]).sum())
        if ll > best_ll:
            best, best_ll = float(tau**2), ll
    return best


def _shrink(
    stats: pl.DataFrame, raw: dict[str, tuple[float, float]], overall: float, overall_se: float, n: int
) -> ElasticityFit:
    """Empirical Bayes toward each category's precision-weighted mean (the overall estimate for a
    category without estimated items); 95% intervals from the posterior spread."""
    z = 1.959963984540054
    est = stats.filter(pl.col("item_id").is_in(list(raw)))
    values = np.array([raw[i][0] for i in est["item_id"].to_list()])
    ses = np.array([raw[i][1] for i in est["item_id"].to_list()])
    # The spread of true item effects around their category's (tau): the maximum-likelihood value of
    # the normal-normal model (each estimate ~ N(category mean, tau^2 + se^2)), over a grid; at least
    # a little, so that no well-measured item is pulled all the way to its category.
    tau2 = _tau2(est["category"].to_numpy().astype(str), values, ses) if values.size > 1 else 0.1**2
    categories: dict[str, float] = {}
    for category in stats["category"].unique().to_list():
        inside = (est["category"] == category).to_numpy()
        if inside.any():
            w = 1.0 / (ses[inside] ** 2 + tau2)
            categories[category] = float((w * values[inside]).sum() / w.sum())
        else:
            categories[category] = overall
    out = []
    for item, category, periods, spread in stats.select("item_id", "category", "periods", "price_spread").iter_rows():
        prior = categories[category]
        if item in raw:
            value, se = raw[item]
            weight = tau2 / (tau2 + se**2)
            post = weight * value + (1 - weight) * prior
            sd = float(np.sqrt(tau2 * se**2 / (tau2 + se**2)))
            source = "item"
        else:
            value, se, post, sd = float("nan"), float("nan"), prior, float(np.sqrt(tau2 + overall_se**2))
            source = "category"
        out.append((item, category, value, se, post, post - z * sd, post + z * sd, source, int(periods), float(spread)))
    table = pl.DataFrame(
        out,
        schema=["item_id", "category", "raw", "se", "elasticity", "low", "high", "source", "periods", "price_spread"],
        orient="row",
    ).sort("item_id")
    return ElasticityFit(table, overall, overall_se, categories, float(np.sqrt(tau2)), n)


def naive_loglog(rows: pl.DataFrame) -> dict[str, float]:
    """Per item, the slope of log(1 + units) on log price with no controls: what a spreadsheet gives."""
    frame = rows.select(
        "item_id",
        pl.col("units").clip(0).log1p().alias("y"),
        pl.col("price").log().alias("d"),
    )
    slopes = frame.group_by("item_id").agg(
        ((pl.col("y") - pl.col("y").mean()) * (pl.col("d") - pl.col("d").mean())).sum().alias("sxy"),
        ((pl.col("d") - pl.col("d").mean()) ** 2).sum().alias("sxx"),
    )
    return {
        i: float(a / b) for i, a, b in slopes.select("item_id", "sxy", "sxx").iter_rows() if b is not None and b > 1e-12
    }
