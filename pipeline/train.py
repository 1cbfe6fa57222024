"""Train the next-item recommender on the current dataset version, tracked in MLflow.

One MLflow run per training: parameters, per-epoch loss and validation metric, the dataset version
(DVC hash), the git commit, the split's cut points, the environment, test metrics of the model and
of every baseline side by side, and the model itself as a pyfunc with a signature and an input
example (``mlflow.pyfunc.load_model(f"runs:/{run_id}/model")``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.metrics import recall_ndcg, target_ranks
from models.propensity import DCNConfig, DCNv2, packed_loss
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, TrainResult, model_device, train
from pipeline.features import PROPENSITY_DENSE, PROPENSITY_IDS, ItemVocab, NextItemExamples, TimeSplit, Vocab
from pipeline.featureset import (
    FeatureSet,
    FeatureSetError,
    PropensityFeatures,
    build_features,
    feature_params,
    load_propensity_features,
    load_recommender_features,
    read_manifest,
)
from pipeline.params import TrainPropensityParams, TrainRecommenderParams
from pipeline.resume import RUNTIME_PARAMS, checkpoint_dir, resume_key, tracked_training
from pipeline.settings import StatePaths
from pipeline.tracking import REPO_ROOT, environment_tags, git_commit, use_experiment

log = logging.getLogger(__name__)

MODEL_NAME = "next_item"
POPULAR_KEPT = 1000   # the cold-start fallback's list; k is at most this


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    dataset_version: str
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate_scorer(scorer, examples: NextItemExamples, batch: int = 1024) -> dict[str, float]:
    """Recall@10/20 and NDCG@10/20 of a scorer over the full catalog, in batches on the scorer's
    device (a model's own; the CPU for a baseline)."""
    device = model_device(scorer)
    histories, targets = torch.from_numpy(examples.histories), torch.from_numpy(examples.targets)
    ranks = []
    with torch.no_grad():
        for i in range(0, targets.numel(), batch):
            scores = scorer(histories[i:i + batch].to(device))
            ranks.append(target_ranks(scores, targets[i:i + batch].to(device)).cpu().numpy())
    return recall_ndcg(np.concatenate(ranks) if ranks else np.zeros(0))


def train_recommender(paths: StatePaths, params: TrainRecommenderParams,
                      tags: dict[str, str] | None = None, features: Path | None = None) -> TrainOutcome:
    """Train SASRec on a feature set (``features``; by default the current dataset version's) and
    log the run, baselines included.

    Raises:
        FileNotFoundError: no dataset version has been published yet.
        ValueError: the data spans too few days for the configured split.
    """
    import mlflow

    fs = features_for(paths, MODEL_NAME, params, features)
    f = load_recommender_features(fs.path)
    split, vocab, valid, test = f.split, f.vocab, f.valid, f.test
    windows = torch.from_numpy(f.windows)
    all_train = f.train_items
    baselines = {
        "popularity": PopularityRecommender(vocab.size, all_train).score,
        "recent_popularity": PopularityRecommender(vocab.size, f.recent_items).score,
        "cooccurrence": CooccurrenceRecommender(vocab.size, f.test_sequences).score,
    }

    config = SASRecConfig(n_items=vocab.size, max_len=params.max_len, dim=params.dim, heads=params.heads,
                          layers=params.layers, dropout=params.dropout)
    loop = _loop_config(params)
    torch.manual_seed(params.seed)
    model = SASRec(config)
    key = resume_key(MODEL_NAME, tags, fs.path, fs.dataset_version, params)
    if _rank() != 0:
        # Under torchrun the other ranks train their share (resuming from the same checkpoint as
        # rank 0); rank 0 evaluates, tracks and logs the model.
        train(model, windows, lambda m, b: m(b[:, :-1], b[:, 1:]), lambda m: 0.0, loop,
              checkpoint_dir=checkpoint_dir(paths, MODEL_NAME, key), model_args=config.to_dict())
        return TrainOutcome("", "", fs.dataset_version, {})

    experiment_id = use_experiment(paths, MODEL_NAME)
    with tracked_training(paths, MODEL_NAME, experiment_id, key, f"sasrec-{fs.dataset_version[:8]}",
                          tags) as run, tempfile.TemporaryDirectory() as tmp:
        _tag_run(MODEL_NAME, fs, tags)
        _log_setup(config, loop, split, {f"data.{k}": v for k, v in f.counts.items()})

        def log_epoch(h: dict[str, float]) -> None:
            mlflow.log_metrics({"train_loss": h["train_loss"], "valid_recall_at_20": h["valid_metric"]},
                               step=int(h["epoch"]))

        result = train(
            model, windows,
            lambda m, b: m(b[:, :-1], b[:, 1:]),
            lambda m: evaluate_scorer(m, valid)["recall_at_20"],
            loop, checkpoint_dir=run.checkpoints, model_args=config.to_dict(), on_epoch=log_epoch,
        )
        _tag_result(result)
        model.eval()
        metrics = {f"test_{k}": v for k, v in evaluate_scorer(model, test).items()}
        for name, scorer in baselines.items():
            metrics.update({f"baseline_{name}_{k}": v for k, v in evaluate_scorer(scorer, test).items()})
        metrics.update({"best_valid_recall_at_20": result.best_metric, "best_epoch": result.best_epoch,
                        "train_samples_per_second": result.samples_per_second})
        mlflow.log_metrics(metrics)

        # The cold-start fallback: the most popular items of the training period.
        counts = np.bincount(all_train, minlength=vocab.size)[2:]
        popular = [vocab.ids[i] for i in np.argsort(-counts, kind="stable")[:POPULAR_KEPT]]
        from pipeline.recommender import pyfunc_model_args

        info = mlflow.pyfunc.log_model(name="model", **pyfunc_model_args(
            model.cpu(), list(vocab.ids), popular, run.checkpoints / "best.pt", Path(tmp),
            _input_example(test, vocab)))
        log.info("run %s: test recall@20 %.4f (popularity %.4f, co-occurrence %.4f)", run.run_id,
                 metrics["test_recall_at_20"], metrics["baseline_popularity_recall_at_20"],
                 metrics["baseline_cooccurrence_recall_at_20"])
        return TrainOutcome(run.run_id, info.model_uri, fs.dataset_version, metrics)


def _loop_config(params: TrainRecommenderParams | TrainPropensityParams) -> TrainConfig:
    """The training loop's settings from a model's training parameters."""
    return TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                       weight_decay=getattr(params, "weight_decay", 0.0), patience=params.patience,
                       seed=params.seed, device=params.device, precision=params.precision, compile=params.compile)


def _tag_result(result: TrainResult) -> None:
    """Where and how the run trained; tags, not params, because a resumed run may train elsewhere."""
    import mlflow

    mlflow.set_tags({"train.device": result.device, "train.precision": result.precision,
                     "train.compiled": str(result.compiled),
                     "train.resumed_from_epoch": str(result.resumed_from_epoch)})


def exit_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    torchrun starts its ranks in sessions of their own, so when its agent is SIGKILLed (a worker
    killing a timed-out task, a lost pod) the ranks would train on as orphans. They would also hold
    the run's lock, and the retry could not resume. A no-op where prctl does not exist.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() != parent:    # the parent died before the call: nobody would send the signal
        os.kill(os.getpid(), sig)


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def features_for(paths: StatePaths, model_name: str, params, folder: Path | None) -> FeatureSet:
    """The feature set to train on: ``folder`` (built by the features stage, e.g. an earlier Airflow
    task) after checking it matches ``params``, or else the current dataset version's, built now if
    no earlier stage built it.

    Raises:
        FeatureSetError: ``folder`` is not a feature set of this model or was built with other
            feature parameters than ``params``.
    """
    if folder is None:
        return build_features(paths, model_name, params)
    manifest = read_manifest(folder, model_name)
    wanted = feature_params(model_name, params)
    if manifest["params"] != wanted:
        built = manifest["params"]
        differ = sorted(k for k in wanted if built.get(k) != wanted[k])
        raise FeatureSetError(f"{folder} was built with {', '.join(f'{k}={built.get(k)}' for k in differ)}"
                              f"; training asks for {', '.join(f'{k}={wanted[k]}' for k in differ)}")
    return FeatureSet(model_name, Path(folder), manifest["dataset_version"], manifest["dataset_path"], reused=True)


def _tag_run(model_name: str, features: FeatureSet, tags: dict[str, str] | None = None) -> None:
    """Tags every training run carries: what was trained, on which data and features, from which code, where;
    plus the caller's ``tags`` (e.g. the Airflow DAG run that asked for it)."""
    import mlflow

    mlflow.set_tags({"model": model_name, "dataset_version": features.dataset_version,
                     "dataset_path": features.dataset_path, "features_path": str(features.path),
                     "train.world_size": os.environ.get("WORLD_SIZE", "1"),
                     "git_commit": git_commit(), **environment_tags(), **(tags or {})})


def finished_run(paths: StatePaths, model_name: str, tags: dict[str, str]) -> TrainOutcome | None:
    """The newest finished training run of ``model_name`` carrying all of ``tags``, with its model.

    The DAG's training task tags its run with the DAG run's id and asks this first, so a cleared and
    rerun task returns the run it already made instead of training (and later registering) a second
    model for the same DAG run.
    """
    import mlflow

    experiment_id = use_experiment(paths, model_name)
    conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + [f"tags.model = '{model_name}'",
                                                                       "attributes.status = 'FINISHED'"]
    runs = mlflow.search_runs([experiment_id], filter_string=" and ".join(conditions), max_results=1,
                              order_by=["attributes.start_time DESC"], output_format="list")
    if not runs:
        return None
    run = runs[0]
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    if not models:
        return None
    return TrainOutcome(run.info.run_id, models[0].model_uri, run.data.tags.get("dataset_version", ""),
                        dict(run.data.metrics))


def _log_setup(model_config, loop: TrainConfig, split: TimeSplit, data: dict) -> None:
    """Params every training run records: the model, the loop, the split's cut points, the data."""
    import mlflow

    # Device, precision and compile are tags (_tag_result): a resumed run may train on other hardware.
    mlflow.log_params({**{f"model.{k}": v for k, v in model_config.to_dict().items()},
                       **{f"train.{k}": v for k, v in loop.to_dict().items()
                          if k not in (*RUNTIME_PARAMS, "progress")},
                       **{f"split.{k}": v for k, v in split.to_dict().items()}, **data})
    mlflow.log_dict(split.to_dict(), "split.json")


def _input_example(test: NextItemExamples, vocab: ItemVocab):
    import pandas as pd

    histories = [[i for i in vocab.decode(h) if i is not None] for h in test.histories[:2]]
    return pd.DataFrame({"history": histories, "k": [10] * len(histories)})


PROPENSITY_MODEL_NAME = "purchase_propensity"


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
    logreg: object = None    # the baseline, fitted on model.dense_mean/dense_std-scaled features


def logreg_features(dense: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The logistic-regression baseline's inputs: DCN-v2's own compression and scaling."""
    return (DCNv2.transform(torch.as_tensor(dense, dtype=torch.float32)).numpy() - mean) / std


def fit_propensity(
    features: PropensityFeatures, params: TrainPropensityParams, on_epoch=None, checkpoint_dir: Path | None = None,
) -> PropensityFit:
    """Train DCN-v2 and a logistic regression on the same rows; score both on the same test rows
    (``featureset.propensity_features`` says which rows)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    split, vocabs, test_rows = features.split, features.vocabs, features.test_rows
    (tr_ids, tr_dense, tr_y), (va_ids, va_dense, va_y), (te_ids, te_dense, te_y) = (
        _propensity_tensors(r, vocabs) for r in (features.train_rows, features.valid_rows, test_rows))

    config = DCNConfig(n_dense=len(PROPENSITY_DENSE), id_cardinalities=tuple(v.size for v in vocabs.values()),
                       embedding_dim=params.embedding_dim, cross_layers=params.cross_layers,
                       hidden=params.hidden, dropout=params.dropout)
    loop = _loop_config(params)
    torch.manual_seed(params.seed)
    model = DCNv2(config)
    model.fit_scaler(tr_dense)
    n_ids = len(PROPENSITY_IDS)
    packed = torch.cat([tr_ids.float(), tr_dense, tr_y[:, None]], dim=1)

    def valid_auc(m) -> float:
        device = model_device(m)
        return float(roc_auc_score(va_y.numpy(), m(va_ids.to(device), va_dense.to(device)).float().cpu().numpy()))

    result = train(model, packed, packed_loss(n_ids), valid_auc, loop, checkpoint_dir=checkpoint_dir,
                   model_args=config.to_dict(), on_epoch=on_epoch)
    model.eval()
    model.calibrate(va_ids, va_dense, va_y)

    with torch.no_grad():
        device = model_device(model)
        p_model = model.predict_proba(te_ids.to(device), te_dense.to(device)).cpu().numpy()
    model.cpu()   # from here on the model is logged and served: a CPU host must load it

    # The baseline sees the same dense features with the model's own compression and scaling.
    def lr_features(dense: torch.Tensor) -> np.ndarray:
        return logreg_features(dense.numpy(), model.dense_mean.numpy(), model.dense_std.numpy())

    logreg = LogisticRegression(max_iter=2000).fit(lr_features(tr_dense), tr_y.numpy())
    p_lr = logreg.predict_proba(lr_features(te_dense))[:, 1]
    y = te_y.numpy()
    metrics = {
        "test_auc": float(roc_auc_score(y, p_model)), "test_log_loss": float(log_loss(y, p_model, labels=[0, 1])),
        "baseline_logreg_auc": float(roc_auc_score(y, p_lr)),
        "baseline_logreg_log_loss": float(log_loss(y, p_lr, labels=[0, 1])),
        "best_valid_auc": result.best_metric, "best_epoch": result.best_epoch,
        "train_samples_per_second": result.samples_per_second,
    }
    data = {"data.horizon_days": params.horizon_days, "data.lookback_days": params.lookback_days,
            "data.cutoffs": features.counts["cutoffs"], "data.train_rows": len(tr_y), "data.valid_rows": len(va_y),
            "data.test_rows": len(te_y), "data.train_positive_rate": float(tr_y.mean())}
    return PropensityFit(model, config, loop, split, vocabs, result, metrics, data, test_rows, logreg)


def train_propensity(paths: StatePaths, params: TrainPropensityParams,
                     tags: dict[str, str] | None = None, features: Path | None = None) -> TrainOutcome:
    """Fit the propensity model on a feature set (``features``; by default the current dataset
    version's) and log the run to MLflow."""
    import mlflow
    from mlflow.models import infer_signature

    fs = features_for(paths, PROPENSITY_MODEL_NAME, params, features)
    rows = load_propensity_features(fs.path)
    key = resume_key(PROPENSITY_MODEL_NAME, tags, fs.path, fs.dataset_version, params)
    if _rank() != 0:   # under torchrun: rank 0 alone tracks and logs (see train_recommender)
        fit_propensity(rows, params, checkpoint_dir=checkpoint_dir(paths, PROPENSITY_MODEL_NAME, key))
        return TrainOutcome("", "", fs.dataset_version, {})

    experiment_id = use_experiment(paths, PROPENSITY_MODEL_NAME)
    with tracked_training(paths, PROPENSITY_MODEL_NAME, experiment_id, key, f"dcnv2-{fs.dataset_version[:8]}",
                          tags) as run, tempfile.TemporaryDirectory() as tmp:
        _tag_run(PROPENSITY_MODEL_NAME, fs, tags)

        def log_epoch(h: dict[str, float]) -> None:
            mlflow.log_metrics({"train_loss": h["train_loss"], "valid_auc": h["valid_metric"]}, step=int(h["epoch"]))

        fit = fit_propensity(rows, params, on_epoch=log_epoch, checkpoint_dir=run.checkpoints)
        _tag_result(fit.result)
        model, vocabs, test_rows, metrics = fit.model, fit.vocabs, fit.test_rows, fit.metrics
        _log_setup(fit.config, fit.loop, fit.split, fit.data)
        mlflow.log_metrics(metrics)

        weights = Path(tmp) / "propensity.pt"
        torch.save({"model": model.state_dict(), "model_args": fit.config.to_dict()}, weights)
        vocab_file = Path(tmp) / "vocabs.json"
        vocab_file.write_text(json.dumps({k: list(v.values) for k, v in vocabs.items()}))
        # The baseline goes with the run, so the gate can score it on the same rows as the model.
        import joblib

        baseline = Path(tmp) / "logreg.joblib"
        joblib.dump({"model": fit.logreg, "mean": model.dense_mean.numpy(), "std": model.dense_std.numpy()},
                    baseline)
        mlflow.log_artifact(str(baseline), artifact_path="baseline")
        from pipeline.propensity_model import PropensityPyfunc

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
        log.info("run %s: test AUC %.4f, log loss %.4f (logistic regression: AUC %.4f, log loss %.4f)",
                 run.run_id, metrics["test_auc"], metrics["test_log_loss"], metrics["baseline_logreg_auc"],
                 metrics["baseline_logreg_log_loss"])
        return TrainOutcome(run.run_id, info.model_uri, fs.dataset_version, metrics)


def train_distributed(paths: StatePaths, model_name: str, nproc: int, features: Path | None = None,
                      tags: dict[str, str] | None = None, timeout: float | None = None) -> TrainOutcome:
    """Train with ``torchrun`` on ``nproc`` processes of this machine (one per GPU; gloo on CPU).

    Runs ``python -m pipeline train`` under ``torch.distributed.run --standalone``: every rank trains
    its share of each epoch with DDP, rank 0 alone tracks the run and logs the model. The parameters
    are the deployment's (``params.yaml`` or ``SHOPML_PARAMS``), as for any CLI stage.

    Raises:
        RuntimeError: the distributed training failed; the message ends with its output's tail.
    """
    import signal
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="shopml-torchrun-") as tmp:
        output = Path(tmp) / "outcome.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "pipeline", "train", "--model", model_name, "--output", str(output), "--reuse-finished",
                   *(["--features", str(features)] if features else []),
                   *[arg for k, v in (tags or {}).items() for arg in ("--tag", f"{k}={v}")]]
        env = {**os.environ, "SHOPML_HOME": str(paths.home)}
        # If this task process dies, torchrun gets SIGTERM and stops its ranks (the ranks themselves
        # die with torchrun: see exit_with_parent), so a retry finds the run's lock free.
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: exit_with_parent(signal.SIGTERM))
        if done.returncode != 0 or not output.exists():
            tail = (done.stdout[-2000:] + done.stderr[-4000:]).strip()
            raise RuntimeError(f"torchrun with {nproc} processes failed (exit code {done.returncode}):\n{tail}")
        data = json.loads(output.read_text())
    return TrainOutcome(**data)
