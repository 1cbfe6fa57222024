"""Train the next-item recommender (SASRec) on a feature set, tracked in MLflow, baselines beside it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.blend import BlendedRecommender, choose_beta
from models.metrics import scorer_metrics
from models.sasrec import SASRec, SASRecConfig
from models.train import train as train_loop
from pipeline.core.params import TrainRecommenderParams
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import use_experiment
from pipeline.families.featureset import features_for
from pipeline.families.next_item.features import ItemVocab, NextItemExamples, load_features
from pipeline.families.next_item.pyfunc import pyfunc_model_args
from pipeline.families.resume import checkpoint_dir, resume_key, tracked_training
from pipeline.families.training import TrainOutcome, log_setup, loop_config, rank, tag_result, tag_run

log = logging.getLogger(__name__)

MODEL_NAME = "next_item"
POPULAR_KEPT = 1000  # the cold-start fallback's list; k is at most this


def evaluate_scorer(scorer, examples: NextItemExamples, batch: int = 1024) -> dict[str, float]:
    """Recall@10/20 and NDCG@10/20 of a scorer on the examples (``models.metrics.scorer_metrics``)."""
    return scorer_metrics(scorer, examples.histories, examples.targets, batch)


def train(
    paths: StatePaths,
    params: TrainRecommenderParams,
    tags: dict[str, str] | None = None,
    features: Path | None = None,
    dataset_version: str | None = None,
) -> TrainOutcome:
    """Train SASRec on a feature set (``features``; by default the one of ``dataset_version``,
    itself by default the current one) and log the run, baselines included.

    Raises:
        FileNotFoundError: no dataset version has been published yet.
        ValueError: the data spans too few days for the configured split.
    """
    import mlflow

    fs = features_for(paths, MODEL_NAME, params, features, dataset_version)
    f = load_features(fs.path)
    split, vocab, valid, test = f.split, f.vocab, f.valid, f.test
    windows = torch.from_numpy(f.windows)
    all_train = f.train_items
    # Co-occurrence counted on what the model may know at each stage: the training sequences to
    # choose the blend's weight on validation, the sequences up to the test period for the test
    # (SASRec's test histories include the validation period too).
    test_cooccurrence = CooccurrenceRecommender(vocab.size, f.test_sequences)
    baselines = {
        "popularity": PopularityRecommender(vocab.size, all_train).score,
        "recent_popularity": PopularityRecommender(vocab.size, f.recent_items).score,
        "cooccurrence": test_cooccurrence.score,
    }

    config = SASRecConfig(
        n_items=vocab.size,
        max_len=params.max_len,
        dim=params.dim,
        heads=params.heads,
        layers=params.layers,
        dropout=params.dropout,
        loss=params.loss,
        n_negatives=params.n_negatives,
    )
    loop = loop_config(params)
    torch.manual_seed(params.seed)
    model = SASRec(config)
    if config.loss == "sampled":  # negatives in proportion to how often each item is a target
        model.set_item_counts(torch.bincount(windows[:, 1:].reshape(-1), minlength=vocab.size))
    key = resume_key(MODEL_NAME, tags, fs.path, fs.dataset_version, params)
    if rank() != 0:
        # Under torchrun the other ranks train their share (resuming from the same checkpoint as
        # rank 0); rank 0 evaluates, tracks and logs the model.
        train_loop(
            model,
            windows,
            lambda m, b: m(b[:, :-1], b[:, 1:]),
            lambda m: 0.0,
            loop,
            checkpoint_dir=checkpoint_dir(paths, MODEL_NAME, key),
            model_args=config.to_dict(),
        )
        return TrainOutcome("", "", fs.dataset_version, {})

    experiment_id = use_experiment(paths, MODEL_NAME)
    with (
        tracked_training(paths, MODEL_NAME, experiment_id, key, f"sasrec-{fs.dataset_version[:8]}", tags) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tag_run(MODEL_NAME, fs, tags)
        log_setup(config, loop, split, {f"data.{k}": v for k, v in f.counts.items()})

        def log_epoch(h: dict[str, float]) -> None:
            mlflow.log_metrics(
                {"train_loss": h["train_loss"], "valid_ndcg_at_10": h["valid_metric"]}, step=int(h["epoch"])
            )

        result = train_loop(
            model,
            windows,
            lambda m, b: m(b[:, :-1], b[:, 1:]),
            lambda m: evaluate_scorer(m, valid)["ndcg_at_10"],  # early stopping on validation NDCG@10
            loop,
            checkpoint_dir=run.checkpoints,
            model_args=config.to_dict(),
            on_epoch=log_epoch,
        )
        tag_result(result)
        model.eval()
        beta, curve = 0.0, {}
        if params.blend:
            beta, curve = choose_beta(
                model,
                CooccurrenceRecommender(vocab.size, f.train_sequences),
                lambda m: evaluate_scorer(m, valid)["ndcg_at_10"],
            )
        served = BlendedRecommender(model, test_cooccurrence, beta)
        metrics = {f"test_{k}": v for k, v in evaluate_scorer(served, test).items()}
        metrics.update({f"test_sasrec_{k}": v for k, v in evaluate_scorer(model, test).items()})
        metrics.update({"blend_beta": beta, **{f"blend_valid_ndcg_at_10_beta_{b:g}": v for b, v in curve.items()}})
        for name, scorer in baselines.items():
            metrics.update({f"baseline_{name}_{k}": v for k, v in evaluate_scorer(scorer, test).items()})
        metrics.update(
            {
                "best_valid_ndcg_at_10": result.best_metric,
                "best_epoch": result.best_epoch,
                "train_samples_per_second": result.samples_per_second,
            }
        )
        mlflow.log_metrics(metrics)

        # The cold-start fallback: the most popular items of the training period.
        counts = np.bincount(all_train, minlength=vocab.size)[2:]
        popular = [vocab.ids[i] for i in np.argsort(-counts, kind="stable")[:POPULAR_KEPT]]
        info = mlflow.pyfunc.log_model(
            name="model",
            **pyfunc_model_args(
                served.cpu(),
                list(vocab.ids),
                popular,
                run.checkpoints / "best.pt",
                Path(tmp),
                _input_example(test, vocab),
            ),
        )
        log.info(
            "run %s: test NDCG@10 %.4f (SASRec alone %.4f, blend weight %g; popularity %.4f, co-occurrence %.4f)",
            run.run_id,
            metrics["test_ndcg_at_10"],
            metrics["test_sasrec_ndcg_at_10"],
            beta,
            metrics["baseline_popularity_ndcg_at_10"],
            metrics["baseline_cooccurrence_ndcg_at_10"],
        )
        return TrainOutcome(run.run_id, info.model_uri, fs.dataset_version, metrics)


def _input_example(test: NextItemExamples, vocab: ItemVocab):
    import pandas as pd

    histories = [[i for i in vocab.decode(h) if i is not None] for h in test.histories[:2]]
    return pd.DataFrame({"history": histories, "k": [10] * len(histories)})
