"""Evaluate a candidate and the current champion on the same frozen test split.

Both models are scored through their MLflow pyfunc interface (raw ids in, ranked ids or
probabilities out), the interface the serving stage uses, so a champion trained on an older
dataset version with another item vocabulary is compared fairly on today's test data.

* next-item: per user, the rank of the next item in the model's top 20 (the pyfunc ranks the full
  catalog, so Recall@K and NDCG@K are full-ranking metrics); coverage of the catalog and popularity
  bias of the recommendations; the global-popularity baseline beside them;
* propensity: AUC, log loss and expected calibration error on the test cutoff's candidate rows;
* for both, the metrics per slice: new vs returning users, the top categories, price bands.

Per-row values (one row per user for ranking, one per candidate for propensity) are kept so that the
gate can bootstrap the difference between candidate and champion over users.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl

from pipeline.features import (
    ItemVocab,
    TimeSplit,
    next_item_examples,
    propensity_rows,
    user_sequences,
)

K = 20
HISTORY_LEN = 200        # the longest history sent to a model; each model keeps what it can use
TOP_CATEGORIES = 5
CALIBRATION_BINS = 10


@dataclass
class TestSet:
    """The frozen test cases of one model family, with the slice of every row."""

    inputs: pd.DataFrame                  # what the pyfunc receives
    users: np.ndarray                     # user id of every row (the bootstrap's clusters)
    slices: pd.DataFrame                  # user_type, category, price_band per row
    targets: np.ndarray | None = None     # next item (ranking)
    labels: np.ndarray | None = None      # bought within the horizon (propensity)
    catalog_items: int = 0
    item_popularity: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelScores:
    """One model's figures on a test set and its per-row values for the bootstrap."""

    metrics: dict[str, float]
    values: dict[str, np.ndarray]          # per-row arrays: ndcg_at_20, recall_at_20 ... or probability
    slices: dict[str, dict[str, float]]    # slice name -> metrics
    latency_ms_p95: float = float("nan")
    # The model's raw answers, row for row (the pyfunc's output); the serving parity check replays them.
    predictions: pd.DataFrame | None = None


def _price_band(prices: pl.Series, cuts: tuple[float, float]) -> list[str]:
    return ["unknown" if p is None else "low" if p < cuts[0] else "mid" if p < cuts[1] else "high"
            for p in prices.to_list()]


def _slices(users: list[str], items: pl.Series, events: pl.DataFrame, catalog: pl.DataFrame,
            first_seen_before: datetime) -> pd.DataFrame:
    """new vs returning (any event before ``first_seen_before``), item category (top ones), price band."""
    returning = set(events.filter(pl.col("event_time") < first_seen_before)["user_id"].unique().to_list())
    meta = pl.DataFrame({"item_id": items.cast(pl.String)}).join(
        catalog.select("item_id", "category", "price"), on="item_id", how="left", maintain_order="left")
    # Categories by event volume: count per item first, so the join is catalog-sized, not event-sized.
    top = (events.group_by("item_id").len().join(catalog.select("item_id", "category"), on="item_id")
           .group_by("category").agg(pl.col("len").sum()).sort("len", "category", descending=[True, False])
           .head(TOP_CATEGORIES)["category"].to_list())
    prices = catalog["price"].drop_nulls()
    cuts = (float(prices.quantile(1 / 3)), float(prices.quantile(2 / 3))) if prices.len() else (0.0, 0.0)
    return pd.DataFrame({
        "user_type": ["returning" if u in returning else "new" for u in users],
        "category": [c if c in top else "other" for c in meta["category"].to_list()],
        "price_band": _price_band(meta["price"], cuts),
    })


def next_item_test_set(events: pl.DataFrame, catalog: pl.DataFrame, split: TimeSplit) -> TestSet:
    """Each user active in the test period: their history before it (raw ids) and their next item.

    Items first seen in the test period cannot be recommended by any model and are left out.
    """
    before = events.filter(pl.col("event_time") < split.valid_end)
    vocab = ItemVocab.from_events(before)
    histories = user_sequences(events, vocab, split.valid_end)
    examples, _ = next_item_examples(events, vocab, histories, split.valid_end, split.end, HISTORY_LEN)
    history_ids = [[i for i in vocab.decode(h) if i is not None] for h in examples.histories]
    targets = np.array(vocab.decode(examples.targets), dtype=object)
    counts = before.group_by("item_id").len()
    return TestSet(
        inputs=pd.DataFrame({"history": history_ids, "k": K}),
        users=np.array(examples.users, dtype=object),
        slices=_slices(examples.users, pl.Series(targets.tolist(), dtype=pl.String), events, catalog,
                       split.train_end),
        targets=targets,
        catalog_items=len(vocab.ids),
        item_popularity=dict(zip(counts["item_id"].to_list(), counts["len"].to_list(), strict=True)),
    )


def propensity_test_set(events: pl.DataFrame, catalog: pl.DataFrame, split: TimeSplit, horizon_days: int,
                        lookback_days: int) -> TestSet:
    """The candidate rows at the test cutoff (``split.valid_end``), features before it, labels after."""
    from pipeline.features import PROPENSITY_DENSE

    rows = propensity_rows(events, catalog, split.valid_end, timedelta(days=horizon_days),
                           timedelta(days=lookback_days))
    if rows.height == 0 or rows["label"].n_unique() < 2:
        raise ValueError(f"the test rows at {split.valid_end:%Y-%m-%d} have a single label; AUC is undefined")
    return TestSet(
        inputs=rows.select("item_id", "category", "brand", *PROPENSITY_DENSE).to_pandas(),
        users=rows["user_id"].to_numpy().astype(object),
        slices=_slices(rows["user_id"].to_list(), rows["item_id"], events, catalog, split.train_end),
        labels=rows["label"].to_numpy().astype(np.float64),
    )


def _predict_batches(model, inputs: pd.DataFrame, batch: int) -> pd.DataFrame:
    parts = [model.predict(inputs.iloc[i:i + batch]) for i in range(0, len(inputs), batch)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _latency_p95(model, inputs: pd.DataFrame, requests: int = 50) -> float:
    """p95 of one-row predictions (one user, or one candidate), in milliseconds."""
    times = []
    for i in range(min(requests, len(inputs))):
        start = time.perf_counter()
        model.predict(inputs.iloc[i:i + 1])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 95)) if times else float("nan")


def ranking_values(top_items: list[list[str]], targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row Recall@10/20 and NDCG@10/20 from each row's top-20 list."""
    ranks = np.array([row.index(t) if t in row else K for row, t in zip(top_items, targets, strict=True)])
    out = {}
    for k in (10, 20):
        hit = ranks < k
        out[f"recall_at_{k}"] = hit.astype(np.float64)
        out[f"ndcg_at_{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2), 0.0)
    return out


def ranking_metrics(values: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    mask = np.ones(len(next(iter(values.values()))), dtype=bool) if mask is None else mask
    return {name: float(v[mask].mean()) if mask.any() else float("nan") for name, v in values.items()}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if np.unique(labels).size == 2 else float("nan")


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |observed rate - mean predicted probability| over equal-width bins, weighted by rows."""
    which = np.minimum((probs * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.sum() * abs(labels[inside].mean() - probs[inside].mean())
    return float(error / max(len(labels), 1))


def propensity_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss

    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    return {"auc": auc(labels, probs), "log_loss": float(log_loss(labels, clipped, labels=[0, 1])),
            "calibration_error": expected_calibration_error(labels, probs)}


def per_slice(test: TestSet, metric_fn) -> dict[str, dict[str, float]]:
    out = {}
    for column in test.slices.columns:
        for value in sorted(test.slices[column].unique()):
            mask = (test.slices[column] == value).to_numpy()
            out[f"{column}={value}"] = {**metric_fn(mask), "rows": int(mask.sum())}
    return out


def score_recommender(model, test: TestSet, batch: int = 512) -> ModelScores:
    predictions = _predict_batches(model, test.inputs, batch)
    top = [list(row) for row in predictions["items"].tolist()]
    values = ranking_values(top, test.targets)
    metrics = ranking_metrics(values)
    recommended = [item for row in top for item in row]
    metrics["coverage_at_20"] = len(set(recommended)) / max(test.catalog_items, 1)
    # Popularity bias: mean popularity percentile of what is recommended (1.0 = the most popular item).
    counts = np.array(sorted(test.item_popularity.values()))
    pops = np.array([test.item_popularity.get(i, 0) for i in recommended])
    metrics["popularity_bias"] = float(np.searchsorted(counts, pops, side="right").mean() / max(len(counts), 1)) \
        if pops.size else float("nan")
    return ModelScores(metrics, values, per_slice(test, lambda m: ranking_metrics(values, m)),
                       _latency_p95(model, test.inputs), predictions)


def score_propensity(model, test: TestSet, batch: int = 8192) -> ModelScores:
    predictions = _predict_batches(model, test.inputs, batch)
    probs = predictions["probability"].to_numpy(dtype=np.float64)
    labels = test.labels
    return ModelScores(propensity_metrics(labels, probs), {"probability": probs},
                       per_slice(test, lambda m: propensity_metrics(labels[m], probs[m])),
                       _latency_p95(model, test.inputs), predictions)


def popularity_scores(test: TestSet) -> ModelScores:
    """The global-popularity baseline on the same test rows (same top 20 for every user)."""
    top = [i for i, _ in sorted(test.item_popularity.items(), key=lambda kv: (-kv[1], kv[0]))[:K]]
    values = ranking_values([top] * len(test.targets), test.targets)
    return ModelScores(ranking_metrics(values), values, per_slice(test, lambda m: ranking_metrics(values, m)))
