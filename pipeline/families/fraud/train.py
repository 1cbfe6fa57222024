"""Train the fraud family on a feature set: the DCN-v2 network and its two floors, each with its bands.

All three scorers (``scoring``) are fitted on the training orders; early stopping, Platt scaling and
each one's approve / review / block thresholds (``decisions.choose_bands``, the cheapest within the
daily review budget of ``policy.yaml`` ``fraud_costs``) are chosen on the validation orders. The run
logs the network as the model (``FraudPyfunc``), the floors as ``baseline/rules.json`` and
``baseline/lightgbm.json`` (the same pyfunc's artifact, so a floor can serve), the chosen bands and
recall at the budget as params and metrics: ``valid_*`` (where they were chosen), ``test_*`` (the
test orders, labelled as known at the data's end), ``baseline_<floor>_*``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.params import TrainFraudParams
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import REPO_ROOT, use_experiment
from pipeline.families.featureset import features_for, read_manifest
from pipeline.families.fraud import decisions
from pipeline.families.fraud.features import PERIODS
from pipeline.families.fraud.orders import DENSE
from pipeline.families.fraud.pyfunc import FraudPyfunc
from pipeline.families.fraud.split import FraudSplit
from pipeline.families.resume import resume_key, tracked_training
from pipeline.families.training import TrainOutcome, tag_run

log = logging.getLogger(__name__)

MODEL_NAME = "fraud"
NETWORK = "dcn_v2"
FLOORS = ("rules", "lightgbm")


@dataclass
class FraudFit:
    scorers: dict[str, FraudPyfunc]  # NETWORK and the floors, each with its bands
    metrics: dict[str, float]
    epochs: int
    seconds: dict[str, float]


def load_features(folder: Path) -> tuple[FraudSplit, dict[str, pl.DataFrame]]:
    manifest = read_manifest(folder, MODEL_NAME)
    split = FraudSplit(**{k: _time(v) for k, v in manifest["split"].items()})
    return split, {name: pl.read_parquet(Path(folder) / f"{name}.parquet") for name in PERIODS}


def _time(value: str):
    from datetime import datetime

    return datetime.fromisoformat(value)


def figures(pyfunc: FraudPyfunc, rows: pl.DataFrame, days: float, policy: decisions.CostPolicy) -> dict[str, float]:
    """A scorer's figures on labelled orders under its own bands: AUC-PR, recall at the daily
    budget, cost per 1,000 orders, reviews and blocks a day, the share of frauds stopped."""
    scores = pyfunc.scores(rows)
    labels, amounts = rows["label"].to_numpy(), rows["amount"].to_numpy()
    return {
        "auc_pr": decisions.average_precision(labels, scores),
        "recall_at_budget": decisions.recall_at_budget(
            scores, labels, rows["order_time"].dt.date(), policy.review_budget_per_day
        ),
        **decisions.decision_figures(scores, labels, amounts, pyfunc.bands, days, policy),
        "review_at": pyfunc.bands.review_at,
        "block_at": pyfunc.bands.block_at,
    }


def fit_scorers(
    train: pl.DataFrame, valid: pl.DataFrame, valid_days: float, policy: decisions.CostPolicy, epochs: int, seed: int
) -> tuple[dict[str, FraudPyfunc], int]:
    """The rules, LightGBM and the network fitted on ``train``, each with the cheapest bands within
    the budget on ``valid`` (``valid_days`` long); and the network's epochs."""
    from pipeline.families.fraud import scoring

    for name, rows in (("training", train), ("validation", valid)):
        if rows.height == 0 or rows["label"].sum() == 0:
            raise ValueError(
                f"the {name} period holds {rows.height} labelled orders and no fraud: thresholds and AUC-PR are "
                "undefined; give the data more days or the split fewer (params.yaml train_fraud)"
            )
    lightgbm = scoring.LightGBMScorer.fit(train, valid, seed=seed)
    network, result, network_setting = scoring.fit_network(train, valid, epochs=epochs, seed=seed)
    fitted = {
        "rules": ("rules", scoring.RulesScorer.fit(train, policy)),
        "lightgbm": ("lightgbm", lightgbm),
        NETWORK: ("network", network),
    }
    # The settings each learned scorer chose on validation travel with its scorer file.
    # The rules chosen on the training orders (``scoring.select_rules``) travel in the rules file itself.
    settings = {
        NETWORK: network_setting,
        "lightgbm": lightgbm.settings,
        "rules": {"left_out": "; ".join(n for n in scoring.RULE_NAMES if n not in fitted["rules"][1].rules) or "none"},
    }
    labels, amounts = valid["label"].to_numpy(), valid["amount"].to_numpy()
    out = {}
    for name, (kind, scorer) in fitted.items():
        unbanded = FraudPyfunc.from_parts(kind, scorer, decisions.Bands(review_at=np.inf, block_at=np.inf))
        bands, _ = decisions.choose_bands(unbanded.scores(valid), labels, amounts, valid_days, policy)
        pyfunc = FraudPyfunc.from_parts(kind, scorer, bands, policy.currency)
        pyfunc.figures = {"validation": figures(pyfunc, valid, valid_days, policy), "policy": policy.to_dict()}
        if name in settings:
            pyfunc.figures["settings"] = settings[name]
        out[name] = pyfunc
    return out, result.epochs_run


def fit_fraud(periods: dict[str, pl.DataFrame], params: TrainFraudParams, policy: decisions.CostPolicy) -> FraudFit:
    start = time.perf_counter()
    scorers, epochs = fit_scorers(
        periods["train"], periods["valid"], params.valid_days, policy, params.epochs, params.seed
    )
    seconds = {"fit": time.perf_counter() - start}
    metrics: dict[str, float] = {}
    for name, pyfunc in scorers.items():
        prefix = "" if name == NETWORK else f"baseline_{name}_"
        for period, days in (("valid", params.valid_days), ("test", params.test_days)):
            rows = periods[period]
            if rows.height and rows["label"].sum():
                for key, value in figures(pyfunc, rows, days, policy).items():
                    metrics[f"{prefix}{period}_{key}"] = value
    return FraudFit(scorers, metrics, epochs, seconds)


def train(
    paths: StatePaths,
    params: TrainFraudParams,
    tags: dict[str, str] | None = None,
    features: Path | None = None,
    dataset_version: str | None = None,
) -> TrainOutcome:
    """Fit the fraud scorers on a feature set and log the run (the network as the pyfunc)."""
    import mlflow

    from pipeline.families.fraud.pyfunc import save_network, scorer_file

    fs = features_for(paths, MODEL_NAME, params, features, dataset_version)
    split, periods = load_features(fs.path)
    key = resume_key(MODEL_NAME, tags, fs.path, fs.dataset_version, params)
    experiment_id = use_experiment(paths, MODEL_NAME)
    with (
        tracked_training(paths, MODEL_NAME, experiment_id, key, f"dcnv2-{fs.dataset_version[:8]}", tags) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tag_run(MODEL_NAME, fs, tags)
        policy = decisions.load_cost_policy()
        fit = fit_fraud(periods, params, policy)
        network = fit.scorers[NETWORK]
        mlflow.log_params(
            {
                **{f"split.{k}": v for k, v in split.to_dict().items()},
                "data.maturity_days": params.maturity_days,
                "data.valid_days": params.valid_days,
                "data.test_days": params.test_days,
                **{f"data.{p}_orders": periods[p].height for p in PERIODS},
                **{f"data.{p}_frauds": int(periods[p]["label"].sum()) for p in PERIODS},
                "model.epochs": params.epochs,
                "model.epochs_run": fit.epochs,
                "model.features": len(DENSE),
                **{f"bands.{name}.{k}": v for name, s in fit.scorers.items() for k, v in s.bands.to_dict().items()},
                # The learned scorers' settings, chosen on validation (scoring.LIGHTGBM_GRID, NETWORK_GRID),
                # and the rules the rules floor left out, on the training orders (scoring.select_rules).
                **{
                    f"{name}.{k}": v
                    for name in (*FLOORS, NETWORK)
                    for k, v in ((fit.scorers[name].figures or {}).get("settings") or {}).items()
                },
            }
        )
        mlflow.log_dict(split.to_dict(), "split.json")
        mlflow.log_dict(policy.to_dict(), "fraud_costs.json")
        mlflow.log_metrics({k: v for k, v in fit.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"seconds_{k}": v for k, v in fit.seconds.items()})
        folder = Path(tmp)
        for name in FLOORS:
            mlflow.log_artifact(str(scorer_file(fit.scorers[name], folder / f"{name}.json")), "baseline")
        weights = folder / "network.pt"
        save_network(network.scorer, weights)
        example = periods["valid"].select(DENSE).head(3).to_pandas()
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=FraudPyfunc(),
            artifacts={
                "scorer": str(scorer_file(network, folder / "scorer.json")),
                "weights": str(weights),
            },
            code_paths=[str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
            input_example=example,
        )
        log.info(
            "run %s: test AUC-PR %.4f, cost per 1,000 orders %.1f (LightGBM %.4f, %.1f; rules %.4f, %.1f)",
            run.run_id,
            fit.metrics.get("test_auc_pr", float("nan")),
            fit.metrics.get("test_cost_per_1000", float("nan")),
            fit.metrics.get("baseline_lightgbm_test_auc_pr", float("nan")),
            fit.metrics.get("baseline_lightgbm_test_cost_per_1000", float("nan")),
            fit.metrics.get("baseline_rules_test_auc_pr", float("nan")),
            fit.metrics.get("baseline_rules_test_cost_per_1000", float("nan")),
        )
        return TrainOutcome(run.run_id, info.model_uri, fs.dataset_version, fit.metrics)
