"""Train the next-item recommender on the current dataset version, tracked in MLflow.

One MLflow run per training: parameters, per-epoch loss and validation metric, the dataset version
(DVC hash), the git commit, the split's cut points, the environment, test metrics of the model and
of every baseline side by side, and the model itself as a pyfunc with a signature and an input
example (``mlflow.pyfunc.load_model(f"runs:/{run_id}/model")``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.metrics import recall_ndcg, target_ranks
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train
from pipeline.features import (
    ItemVocab,
    NextItemExamples,
    load_events,
    next_item_examples,
    split_by_time,
    training_windows,
    user_sequences,
)
from pipeline.params import TrainRecommenderParams
from pipeline.settings import StatePaths
from pipeline.tracking import REPO_ROOT, environment_tags, git_commit, use_experiment
from pipeline.version import current_dataset_version

log = logging.getLogger(__name__)

MODEL_NAME = "next_item"


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    dataset_version: str
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate_scorer(scorer, examples: NextItemExamples, batch: int = 1024) -> dict[str, float]:
    """Recall@10/20 and NDCG@10/20 of a scorer over the full catalog."""
    histories, targets = torch.from_numpy(examples.histories), torch.from_numpy(examples.targets)
    ranks = []
    with torch.no_grad():
        for i in range(0, targets.numel(), batch):
            ranks.append(target_ranks(scorer(histories[i:i + batch]), targets[i:i + batch]).cpu().numpy())
    return recall_ndcg(np.concatenate(ranks) if ranks else np.zeros(0))


def train_recommender(paths: StatePaths, params: TrainRecommenderParams) -> TrainOutcome:
    """Train SASRec on the current dataset version and log the run, baselines included.

    Raises:
        FileNotFoundError: no dataset version has been published yet.
        ValueError: the data spans too few days for the configured split.
    """
    import mlflow
    from mlflow.models import infer_signature

    version = current_dataset_version(paths)
    if version is None:
        raise FileNotFoundError(f"no dataset version under {paths.dataset_repo}; run the ingest DAG first")
    events = load_events(paths.canonical)
    split = split_by_time(events, params.valid_days, params.test_days)
    vocab = ItemVocab.from_events(events.filter(pl.col("event_time") < split.train_end))
    sequences = user_sequences(events, vocab, split.train_end)
    windows = torch.from_numpy(training_windows(sequences, params.max_len))
    valid, valid_unknown = next_item_examples(events, vocab, split.train_end, split.valid_end, params.max_len)
    test, test_unknown = next_item_examples(events, vocab, split.valid_end, split.end, params.max_len)
    if windows.shape[0] == 0 or len(valid.targets) == 0:
        raise ValueError("no training sequences or no validation examples in the split")
    # The test history includes validation-period interactions, as it will when serving.
    test_sequences = user_sequences(events, vocab, split.valid_end)

    all_train = np.concatenate(list(sequences.values()))
    recent = events.filter((pl.col("event_time") >= split.train_end - timedelta(days=params.recent_days))
                           & (pl.col("event_time") < split.train_end))
    baselines = {
        "popularity": PopularityRecommender(vocab.size, all_train).score,
        "recent_popularity": PopularityRecommender(vocab.size, vocab.encode(recent["item_id"])).score,
        "cooccurrence": CooccurrenceRecommender(vocab.size, list(test_sequences.values())).score,
    }

    config = SASRecConfig(n_items=vocab.size, max_len=params.max_len, dim=params.dim, heads=params.heads,
                          layers=params.layers, dropout=params.dropout)
    loop = TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                       patience=params.patience, seed=params.seed)
    torch.manual_seed(params.seed)
    model = SASRec(config)

    use_experiment(paths, MODEL_NAME)
    with mlflow.start_run(run_name=f"sasrec-{version.version[:8]}") as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({
            "model": MODEL_NAME, "dataset_version": version.version, "dataset_path": version.path,
            "git_commit": git_commit(), **environment_tags(),
        })
        mlflow.log_params({**{f"model.{k}": v for k, v in config.to_dict().items()},
                           **{f"train.{k}": v for k, v in loop.to_dict().items()},
                           **{f"split.{k}": v for k, v in split.to_dict().items()},
                           "data.train_windows": windows.shape[0], "data.valid_examples": len(valid.targets),
                           "data.test_examples": len(test.targets), "data.items": vocab.size - 2,
                           "data.valid_unknown_targets": valid_unknown, "data.test_unknown_targets": test_unknown})
        mlflow.log_dict(split.to_dict(), "split.json")

        def log_epoch(h: dict[str, float]) -> None:
            mlflow.log_metrics({"train_loss": h["train_loss"], "valid_recall_at_20": h["valid_metric"]},
                               step=int(h["epoch"]))

        result = train(
            model, windows,
            lambda m, b: m.sampled_loss(b[:, :-1], b[:, 1:]),
            lambda m: evaluate_scorer(m, valid)["recall_at_20"],
            loop, checkpoint_dir=Path(tmp) / "checkpoints", model_args=config.to_dict(), on_epoch=log_epoch,
        )
        model.eval()
        metrics = {f"test_{k}": v for k, v in evaluate_scorer(model, test).items()}
        for name, scorer in baselines.items():
            metrics.update({f"baseline_{name}_{k}": v for k, v in evaluate_scorer(scorer, test).items()})
        metrics.update({"best_valid_recall_at_20": result.best_metric, "best_epoch": result.best_epoch,
                        "train_samples_per_second": result.samples_per_second})
        mlflow.log_metrics(metrics)

        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(list(vocab.ids)))
        from pipeline.recommender import SASRecPyfunc

        example = _input_example(test, vocab)
        wrapper = SASRecPyfunc()
        wrapper.model, wrapper.item_ids = model.cpu(), list(vocab.ids)
        wrapper.index = {item: i + 2 for i, item in enumerate(vocab.ids)}
        signature = infer_signature(example, wrapper.predict(None, example))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SASRecPyfunc(),
            artifacts={"checkpoint": str(Path(tmp) / "checkpoints" / "best.pt"), "vocab": str(vocab_file)},
            code_paths=[str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
            signature=signature,
            input_example=example,
        )
        log.info("run %s: test recall@20 %.4f (popularity %.4f, co-occurrence %.4f)", run.info.run_id,
                 metrics["test_recall_at_20"], metrics["baseline_popularity_recall_at_20"],
                 metrics["baseline_cooccurrence_recall_at_20"])
        return TrainOutcome(run.info.run_id, info.model_uri, version.version, metrics)


def _input_example(test: NextItemExamples, vocab: ItemVocab):
    import pandas as pd

    histories = [[i for i in vocab.decode(h) if i is not None] for h in test.histories[:2]]
    return pd.DataFrame({"history": histories, "k": [10] * len(histories)})
