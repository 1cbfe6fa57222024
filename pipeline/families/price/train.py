"""Train the price family on a feature set: choose, backtest, fit the forecaster; estimate elasticities.

1. **Settings on validation.** The objective (Tweedie or L1) and the number of boosting rounds are
   chosen at the validation origin (``split.train_end``), trained on what lies before it.
2. **Rolling-origin backtest.** ``backtest_origins`` origins, ``backtest_step`` periods apart,
   the last one leaving a whole horizon before the test period: at each, the forecaster is trained
   on every row whose target lies before it, and it and the floors forecast the same rows. The
   figures (WAPE and RMSSE, overall and per item class) are logged as ``backtest_<model>_*``.
3. **The model.** The forecaster trained on every row whose target lies before the test period.
4. **Elasticities** by double ML on the same periods (``elasticity``), logged with the model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.params import TrainPriceParams
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import REPO_ROOT, use_experiment
from pipeline.families.featureset import features_for
from pipeline.families.price import forecast as fc
from pipeline.families.price.demand import PERIODS, backtest_origins, forecast_rows, item_classes
from pipeline.families.price.elasticity import ElasticityFit, dml_rows, estimate
from pipeline.families.price.features import PriceFeatures, config_of, load_features
from pipeline.families.price.pricing import price_ranges
from pipeline.families.resume import resume_key, tracked_training
from pipeline.families.training import TrainOutcome, tag_run

log = logging.getLogger(__name__)

MODEL_NAME = "price"


@dataclass
class PriceFit:
    forecaster: fc.Forecaster
    config: fc.ForecastConfig
    backtest: fc.Backtest | None
    elasticity: ElasticityFit | None
    ranges: pl.DataFrame
    metrics: dict[str, float]
    data: dict[str, float | int | str]
    seconds: dict[str, float]

    def pricing(self) -> dict:
        """What both the model's and a floor's pyfunc carry to answer ``/price``."""
        if self.elasticity is not None:
            elasticity = self.elasticity.to_dict()
        else:
            elasticity = {
                "overall": float("nan"),
                "overall_se": float("nan"),
                "categories": {},
                "tau": float("nan"),
                "rows": 0,
                "items": [],
            }
        return {"config": self.config.to_dict(), "elasticity": elasticity, "ranges": self.ranges.to_dicts()}


def fit_price(features: PriceFeatures, params: TrainPriceParams) -> PriceFit:
    import time

    panel, split = features.panel, features.split
    config = config_of(params)
    step = PERIODS[params.period]
    first = split.start + step * params.min_history
    before_test = panel.filter(pl.col("period") < split.valid_end)
    seconds = {}
    start = time.perf_counter()
    config = fc.choose_settings(before_test, config, first, split.train_end)
    seconds["choose"] = time.perf_counter() - start
    classes = item_classes(panel, split.train_end)
    origins = [
        o
        for o in backtest_origins(
            split.valid_end, params.period, params.backtest_origins, params.horizon, params.backtest_step
        )
        if o > first
    ]
    backtest = None
    metrics: dict[str, float] = {}
    if origins:
        backtest, _, _ = fc.backtest(before_test, config, origins, first, classes)
        seconds["backtest"] = backtest.seconds
        for model, figures in backtest.metrics.items():
            metrics.update({f"backtest_{model}_{k.replace('.', '_')}": v for k, v in figures.items()})
        best, gain = fc.improvement(backtest.metrics)
        metrics["backtest_best_floor_wape"] = backtest.metrics[best]["wape"]
        metrics["backtest_gain_over_best_floor"] = gain
    start = time.perf_counter()
    train_rows = fc.training_rows(before_test, config, split.valid_end, first)
    forecaster, _ = fc.fit_forecaster(train_rows, config, None, fc.make_vocab(panel))
    seconds["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    elasticity = None
    try:
        elasticity = estimate(dml_rows(before_test, config, first, split.valid_end), config, seed=params.seed)
        median, low, high = elasticity.median()
        metrics.update(
            {
                "elasticity_median": median,
                "elasticity_median_low": low,
                "elasticity_median_high": high,
                "elasticity_overall": elasticity.overall,
                "elasticity_items_estimated": float((elasticity.table["source"] == "item").sum()),
                "elasticity_tau": elasticity.tau,
            }
        )
    except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:  # no price ever moved, too few rows
        log.warning("no elasticity estimate: %s", exc)
    seconds["elasticity"] = time.perf_counter() - start
    data: dict[str, float | int | str] = {
        "data.period": params.period,
        "data.horizon": params.horizon,
        "data.history": params.history,
        "data.season": params.season,
        "data.items": params.items,
        "data.min_history": params.min_history,
        "data.train_rows": train_rows.height,
        "data.objective": config.objective,
        "data.rounds": config.rounds,
        "data.backtest_origins": ",".join(o.date().isoformat() for o in origins),
    }
    ranges = price_ranges(before_test)
    return PriceFit(forecaster, config, backtest, elasticity, ranges, metrics, data, seconds)


def train(
    paths: StatePaths,
    params: TrainPriceParams,
    tags: dict[str, str] | None = None,
    features: Path | None = None,
    dataset_version: str | None = None,
) -> TrainOutcome:
    """Fit the price family on a feature set and log the run (the forecaster as a pyfunc)."""
    import mlflow

    from pipeline.families.price.pyfunc import PricePyfunc, rows_to_inputs

    fs = features_for(paths, MODEL_NAME, params, features, dataset_version)
    loaded = load_features(fs.path)
    key = resume_key(MODEL_NAME, tags, fs.path, fs.dataset_version, params)
    experiment_id = use_experiment(paths, MODEL_NAME)
    with (
        tracked_training(paths, MODEL_NAME, experiment_id, key, f"lightgbm-{fs.dataset_version[:8]}", tags) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tag_run(MODEL_NAME, fs, tags)
        fit = fit_price(loaded, params)
        mlflow.log_params(
            {
                **{f"model.{k}": v for k, v in fit.config.to_dict().items()},
                **{f"split.{k}": v for k, v in loaded.split.to_dict().items()},
                **fit.data,
            }
        )
        mlflow.log_dict(loaded.split.to_dict(), "split.json")
        mlflow.log_metrics({k: v for k, v in fit.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"seconds_{k}": v for k, v in fit.seconds.items()})
        if fit.backtest is not None:
            mlflow.log_dict({"per_origin": fit.backtest.per_origin, "metrics": fit.backtest.metrics}, "backtest.json")
        pricing = fit.pricing()
        forecaster_file, pricing_file = Path(tmp) / "forecaster.json", Path(tmp) / "pricing.json"
        forecaster_file.write_text(json.dumps(fit.forecaster.to_dict()))
        pricing_file.write_text(json.dumps(pricing, default=float))
        # The floors' price answers need the same table: it goes with the run.
        mlflow.log_artifact(str(pricing_file), artifact_path="baseline")
        step = PERIODS[params.period]
        example_rows = forecast_rows(loaded.panel, [loaded.split.valid_end - step], 1, params.history, params.period)
        example = rows_to_inputs(example_rows.head(3), params.history)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PricePyfunc(),
            artifacts={"forecaster": str(forecaster_file), "pricing": str(pricing_file)},
            code_paths=[str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
            input_example=example,
        )
        backtest = fit.metrics.get("backtest_lightgbm_wape", float("nan"))
        log.info(
            "run %s: backtest WAPE %.4f (best floor %.4f), elasticity median %.2f",
            run.run_id,
            backtest,
            fit.metrics.get("backtest_best_floor_wape", float("nan")),
            fit.metrics.get("elasticity_median", float("nan")),
        )
        return TrainOutcome(run.run_id, info.model_uri, fs.dataset_version, fit.metrics)
