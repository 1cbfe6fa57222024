"""Train the purchase-propensity model (DCN-v2) and its logistic-regression baseline on a feature set."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models.propensity import DCNConfig, DCNv2, packed_loss
from models.train import TrainConfig, TrainResult, model_device
from models.train import train as train_loop
from pipeline.core.params import TrainPropensityParams
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import REPO_ROOT, use_experiment
from pipeline.data.dataset import TimeSplit
from pipeline.families.featureset import features_for
from pipeline.families.purchase_propensity.features import (
    PROPENSITY_DENSE,
    PROPENSITY_IDS,
    PropensityFeatures,
    Vocab,
    load_features,
)
from pipeline.families.purchase_propensity.pyfunc import PropensityPyfunc
from pipeline.families.resume import checkpoint_dir, resume_key, tracked_training
from pipeline.families.training import TrainOutcome, log_setup, loop_config, rank, tag_result, tag_run

log = logging.getLogger(__name__)

MODEL_NAME = "purchase_propensity"


def _propensity_tensors(rows: pl.DataFrame, vocabs: dict[str, Vocab]):
    encoded = rows.with_columns(
        vocabs["item_idx"].encode_expr("item_id").alias("item_idx"),
        vocabs["category_idx"].encode_expr("category").alias("category_idx"),
        vocabs["brand_idx"].encode_expr("brand").alias("brand_idx"),
    )
    ids = torch.from_numpy(encoded.select(PROPENSITY_IDS).to_numpy().astype(np.int64))
    dense = torch.from_numpy(encoded.select(PROPENSITY_DENSE).to_numpy().astype(np.float32))
    labels = torch.from_numpy(encoded["label"].to_numpy().astype(np.float32))
    return ids, dense, labels


@dataclass
class PropensityFit:
    """A trained, calibrated propensity model with its baseline and the figures of both."""

    model: DCNv2
    config: DCNConfig
    loop: TrainConfig
    split: TimeSplit
    vocabs: dict[str, Vocab]
    result: TrainResult
    metrics: dict[str, float]
    data: dict[str, float]
    test_rows: pl.DataFrame
    logreg: object = None  # the baseline, fitted on model.dense_mean/dense_std-scaled features
    lightgbm: object = None  # the other baseline: gradient-boosted trees on the raw rows (a lightgbm Booster)


def logreg_features(dense: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The logistic-regression baseline's inputs: DCN-v2's own compression and scaling."""
    return (DCNv2.transform(torch.as_tensor(dense, dtype=torch.float32)).numpy() - mean) / std


def lightgbm_features(ids: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """The LightGBM baseline's inputs: the encoded ids (categorical) then the dense features, raw."""
    return np.concatenate([np.asarray(ids, dtype=np.float64), np.asarray(dense, dtype=np.float64)], axis=1)


def fit_lightgbm(tr: tuple, va: tuple, seed: int):
    """Gradient-boosted trees on the same rows, early stopping on the validation rows: what a shop's
    data scientist tries first, so it is a floor. It is fitted twice, with the ids as categorical
    features and without them (constant columns, which no tree can split on, so the booster ignores
    the ids it is given later), and the one with the better validation AUC is kept: the floor is
    as strong as the model's own choice of inputs. Returns the booster and whether it reads ids."""
    import lightgbm as lgb

    categorical = list(range(len(PROPENSITY_IDS)))
    fitted = []
    for use_ids in (True, False):

        def inputs(ids, dense, use_ids=use_ids):
            return lightgbm_features(ids if use_ids else np.zeros_like(ids), dense)

        model = lgb.LGBMClassifier(
            n_estimators=2000,
            learning_rate=0.05,
            num_leaves=31,
            min_child_samples=20,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            random_state=seed,
            n_jobs=-1,
            verbose=-1,
            deterministic=True,
            force_row_wise=True,
        )
        model.fit(
            inputs(*tr[:2]),
            tr[2],
            eval_set=[(inputs(*va[:2]), va[2])],
            eval_metric="auc",
            categorical_feature=categorical,
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        fitted.append((model.best_score_["valid_0"]["auc"], use_ids, model.booster_))
    _, use_ids, booster = max(fitted, key=lambda f: f[0])
    return booster, use_ids


def fit_propensity(
    features: PropensityFeatures,
    params: TrainPropensityParams,
    on_epoch=None,
    checkpoint_dir: Path | None = None,
) -> PropensityFit:
    """Train DCN-v2, a logistic regression and LightGBM on the same rows; score them on the same test
    rows (``featureset.propensity_features`` says which rows)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    split, vocabs, test_rows = features.split, features.vocabs, features.test_rows
    (tr_ids, tr_dense, tr_y), (va_ids, va_dense, va_y), (te_ids, te_dense, te_y) = (
        _propensity_tensors(r, vocabs) for r in (features.train_rows, features.valid_rows, test_rows)
    )

    cardinalities = tuple(v.size for v in vocabs.values()) if params.id_embeddings else ()
    config = DCNConfig(
        n_dense=len(PROPENSITY_DENSE),
        id_cardinalities=cardinalities,
        embedding_dim=params.embedding_dim,
        cross_layers=params.cross_layers,
        hidden=params.hidden,
        dropout=params.dropout,
        wide=params.wide,
        constant_inputs=params.constant_inputs,
    )
    loop = loop_config(params)
    torch.manual_seed(params.seed)
    model = DCNv2(config)
    model.fit_scaler(tr_dense)
    n_ids = len(PROPENSITY_IDS)
    packed = torch.cat([tr_ids.float(), tr_dense, tr_y[:, None]], dim=1)

    def valid_auc(m) -> float:
        device = model_device(m)
        return float(roc_auc_score(va_y.numpy(), m(va_ids.to(device), va_dense.to(device)).float().cpu().numpy()))

    result = train_loop(
        model,
        packed,
        packed_loss(n_ids),
        valid_auc,
        loop,
        checkpoint_dir=checkpoint_dir,
        model_args=config.to_dict(),
        on_epoch=on_epoch,
    )
    model.eval()
    model.calibrate(va_ids, va_dense, va_y)

    with torch.no_grad():
        device = model_device(model)
        p_model = model.predict_proba(te_ids.to(device), te_dense.to(device)).cpu().numpy()
    model.cpu()  # from here on the model is logged and served: a CPU host must load it

    # The baseline sees the same dense features with the model's own compression and scaling.
    def lr_features(dense: torch.Tensor) -> np.ndarray:
        return logreg_features(dense.numpy(), model.dense_mean.numpy(), model.dense_std.numpy())

    logreg = LogisticRegression(max_iter=2000).fit(lr_features(tr_dense), tr_y.numpy())
    p_lr = logreg.predict_proba(lr_features(te_dense))[:, 1]
    booster, gbt_ids = fit_lightgbm(
        (tr_ids.numpy(), tr_dense.numpy(), tr_y.numpy()), (va_ids.numpy(), va_dense.numpy(), va_y.numpy()), params.seed
    )
    p_gbt = booster.predict(lightgbm_features(te_ids.numpy(), te_dense.numpy()))
    y = te_y.numpy()
    metrics = {
        "test_auc": float(roc_auc_score(y, p_model)),
        "test_log_loss": float(log_loss(y, p_model, labels=[0, 1])),
        "baseline_logreg_auc": float(roc_auc_score(y, p_lr)),
        "baseline_logreg_log_loss": float(log_loss(y, p_lr, labels=[0, 1])),
        "baseline_lightgbm_auc": float(roc_auc_score(y, p_gbt)),
        "baseline_lightgbm_log_loss": float(log_loss(y, np.clip(p_gbt, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "baseline_lightgbm_reads_ids": float(gbt_ids),
        "best_valid_auc": result.best_metric,
        "best_epoch": result.best_epoch,
        "train_samples_per_second": result.samples_per_second,
    }
    data = {
        "data.horizon_days": params.horizon_days,
        "data.lookback_days": params.lookback_days,
        "data.cutoffs": features.counts["cutoffs"],
        "data.train_rows": len(tr_y),
        "data.valid_rows": len(va_y),
        "data.test_rows": len(te_y),
        "data.train_positive_rate": float(tr_y.mean()),
    }
    return PropensityFit(model, config, loop, split, vocabs, result, metrics, data, test_rows, logreg, booster)


def train(
    paths: StatePaths,
    params: TrainPropensityParams,
    tags: dict[str, str] | None = None,
    features: Path | None = None,
    dataset_version: str | None = None,
) -> TrainOutcome:
    """Fit the propensity model on a feature set (``features``; by default the one of
    ``dataset_version``, itself by default the current one) and log the run to MLflow."""
    import mlflow
    from mlflow.models import infer_signature

    fs = features_for(paths, MODEL_NAME, params, features, dataset_version)
    rows = load_features(fs.path)
    key = resume_key(MODEL_NAME, tags, fs.path, fs.dataset_version, params)
    if rank() != 0:  # under torchrun: rank 0 alone tracks and logs (see the next_item trainer)
        fit_propensity(rows, params, checkpoint_dir=checkpoint_dir(paths, MODEL_NAME, key))
        return TrainOutcome("", "", fs.dataset_version, {})

    experiment_id = use_experiment(paths, MODEL_NAME)
    with (
        tracked_training(paths, MODEL_NAME, experiment_id, key, f"dcnv2-{fs.dataset_version[:8]}", tags) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tag_run(MODEL_NAME, fs, tags)

        def log_epoch(h: dict[str, float]) -> None:
            mlflow.log_metrics({"train_loss": h["train_loss"], "valid_auc": h["valid_metric"]}, step=int(h["epoch"]))

        fit = fit_propensity(rows, params, on_epoch=log_epoch, checkpoint_dir=run.checkpoints)
        tag_result(fit.result)
        model, vocabs, test_rows, metrics = fit.model, fit.vocabs, fit.test_rows, fit.metrics
        log_setup(fit.config, fit.loop, fit.split, fit.data)
        mlflow.log_metrics(metrics)

        weights = Path(tmp) / "propensity.pt"
        torch.save({"model": model.state_dict(), "model_args": fit.config.to_dict()}, weights)
        vocab_file = Path(tmp) / "vocabs.json"
        vocab_file.write_text(json.dumps({k: list(v.values) for k, v in vocabs.items()}))
        # The baseline goes with the run, so the gate can score it on the same rows as the model.
        import joblib

        baseline = Path(tmp) / "logreg.joblib"
        joblib.dump({"model": fit.logreg, "mean": model.dense_mean.numpy(), "std": model.dense_std.numpy()}, baseline)
        mlflow.log_artifact(str(baseline), artifact_path="baseline")
        gbt = Path(tmp) / "lightgbm.json"
        gbt.write_text(
            json.dumps(
                {"booster": fit.lightgbm.model_to_string(), "vocabs": {k: list(v.values) for k, v in vocabs.items()}}
            )
        )
        mlflow.log_artifact(str(gbt), artifact_path="baseline")
        example = test_rows.select("item_id", "category", "brand", *PROPENSITY_DENSE).head(3).to_pandas()
        wrapper = PropensityPyfunc.from_parts(model, vocabs)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PropensityPyfunc(),
            artifacts={"weights": str(weights), "vocabs": str(vocab_file)},
            code_paths=[str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
            signature=infer_signature(example, wrapper.predict(None, example)),
            input_example=example,
        )
        log.info(
            "run %s: test AUC %.4f, log loss %.4f (logistic regression: AUC %.4f, log loss %.4f)",
            run.run_id,
            metrics["test_auc"],
            metrics["test_log_loss"],
            metrics["baseline_logreg_auc"],
            metrics["baseline_logreg_log_loss"],
        )
        return TrainOutcome(run.run_id, info.model_uri, fs.dataset_version, metrics)
