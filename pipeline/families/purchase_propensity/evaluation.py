"""How a purchase-propensity model is judged: AUC, log loss and expected calibration error on the
candidate rows at the test cutoff, the logistic-regression baseline beside it, its parity check."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import BadInput
from pipeline.core.integrity import baseline_file, baseline_folder
from pipeline.data.dataset import Dataset, TimeSplit
from pipeline.families.base import (
    ModelScores,
    TestSet,
    auc,
    compare_served,
    latency_p95,
    parity_users,
    per_slice,
    predict_batches,
    slices,
)
from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE, propensity_rows
from pipeline.families.spec import ParityOutcome, Post

CALIBRATION_BINS = 10
SCORE_TOLERANCE = 1e-4  # |served - evaluated| probability (float32 models)
CANDIDATES_PER_REQUEST = 50


def test_set(dataset: Dataset, split: TimeSplit, run_params: dict[str, str]) -> TestSet:
    """The candidate rows at the test cutoff (``split.valid_end``), features before it, labels after,
    with the run's own horizon and lookback (``data.horizon_days``, ``data.lookback_days``)."""
    events, catalog = dataset.events(), dataset.catalog(as_of=split.valid_end)  # as known at the cutoff
    rows = propensity_rows(
        events,
        catalog,
        split.valid_end,
        timedelta(days=int(run_params["data.horizon_days"])),
        timedelta(days=int(run_params["data.lookback_days"])),
    )
    if rows.height == 0 or rows["label"].n_unique() < 2:
        raise BadInput(f"the test rows at {split.valid_end:%Y-%m-%d} have a single label; AUC is undefined")
    return TestSet(
        inputs=rows.select("item_id", "category", "brand", *PROPENSITY_DENSE).to_pandas(),
        users=rows["user_id"].to_numpy().astype(object),
        slices=slices(rows["user_id"].to_list(), rows["item_id"], events, catalog, split.train_end),
        labels=rows["label"].to_numpy().astype(np.float64),
    )


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
    return {
        "auc": auc(labels, probs),
        "log_loss": float(log_loss(labels, clipped, labels=[0, 1])),
        "calibration_error": expected_calibration_error(labels, probs),
    }


def _scores(test: TestSet, probs: np.ndarray, latency_ms: float = float("nan"), predictions=None) -> ModelScores:
    """Figures of one model's probabilities on the test rows, overall and per slice."""
    labels = test.labels
    return ModelScores(
        propensity_metrics(labels, probs),
        {"probability": probs},
        per_slice(test, lambda m: propensity_metrics(labels[m], probs[m])),
        latency_ms,
        predictions,
    )


def score(model, test: TestSet, batch: int = 8192) -> ModelScores:
    predictions = predict_batches(model, test.inputs, batch)
    return _scores(
        test, predictions["probability"].to_numpy(dtype=np.float64), latency_p95(model, test.inputs), predictions
    )


def logreg_probabilities(client, run_id: str, dense: np.ndarray, tmp, folder: Path | None = None) -> np.ndarray:
    """The run's logistic-regression floor (``baseline/logreg.joblib``) on rows of dense features;
    ``folder``: the run's checked ``baseline/`` folder when the caller has it (else downloaded)."""
    import joblib

    from pipeline.families.purchase_propensity.pyfunc import logreg_predict

    path = folder / "logreg.joblib" if folder is not None else baseline_file(client, run_id, "logreg.joblib", tmp)
    return logreg_predict(joblib.load(path), dense)


def baselines(client, run_id: str, test: TestSet, tmp: Path) -> dict[str, ModelScores]:
    """The logistic regression and the LightGBM model the run trained on the same rows
    (``baseline/logreg.joblib``, ``baseline/lightgbm.json``), on the same test rows."""
    import lightgbm as lgb

    from pipeline.families.purchase_propensity.pyfunc import id_index, lightgbm_predict

    folder = Path(baseline_folder(client, run_id, tmp))  # checked once, read per floor
    dense = test.inputs[list(PROPENSITY_DENSE)].to_numpy(dtype=np.float32)
    out = {"logistic_regression": _scores(test, logreg_probabilities(client, run_id, dense, tmp, folder))}
    if not (folder / "lightgbm.json").exists():  # a run trained before the LightGBM baseline existed
        return out
    gbt = json.loads((folder / "lightgbm.json").read_text())
    booster = lgb.Booster(model_str=gbt["booster"])
    out["lightgbm"] = _scores(test, lightgbm_predict(booster, id_index(gbt["vocabs"]), test.inputs, dense))
    return out


def parity(post: Post, expected: pd.DataFrame) -> ParityOutcome:
    """Replay the evaluated candidate rows, ``CANDIDATES_PER_REQUEST`` per request, against
    ``/purchase_probability``: every probability within ``SCORE_TOLERANCE``."""

    def candidate(row) -> dict:
        return {
            "item_id": row["item_id"],
            "category": row["category"],
            "brand": row["brand"],
            "features": {f: float(row[f]) for f in PROPENSITY_DENSE},
        }

    records = expected.to_dict("records")
    chunks = [records[i : i + CANDIDATES_PER_REQUEST] for i in range(0, len(records), CANDIDATES_PER_REQUEST)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda c: post("purchase_probability", {"candidates": [candidate(r) for r in c]}), chunks)
        )
    served = np.concatenate([np.asarray(a["probabilities"], dtype=float) for a, _ in answers])
    return compare_served(
        served,
        expected["predicted_probability"].to_numpy(dtype=float),
        SCORE_TOLERANCE,
        answers,
        lambda i: f"user {expected['user_id'].iloc[i]} item {expected['item_id'].iloc[i]}",
    )


def user_parity(post: Post, python_model, dataset: Dataset, n: int) -> ParityOutcome:
    """Candidates by user id (the snapshot's lookups) against probabilities computed offline with
    the training code path for the same pairs at the snapshot's cutoff (``propensity_tables`` for
    these candidates, as ``propensity_rows`` builds training rows, then ``assemble_propensity``).

    ``n // 5`` users (at least 10), each with up to 5 items they touched and 5 they did not, one
    request per user."""
    import polars as pl

    from pipeline.data.dataset import split_by_time
    from pipeline.families.purchase_propensity.features import assemble_propensity, propensity_tables

    events, catalog = dataset.events(), dataset.catalog()
    cutoff = split_by_time(events, 0, 0).end
    users = parity_users(events["user_id"].unique().to_list(), max(n // 5, 10))
    touched = (
        events.filter(pl.col("user_id").is_in(users) & pl.col("item_id").is_not_null())
        .group_by("user_id")
        .agg(pl.col("item_id").unique().sort().head(5))
    )
    touched = dict(zip(touched["user_id"].to_list(), touched["item_id"].to_list(), strict=True))
    items = catalog["item_id"].sort().to_list()
    rng = np.random.default_rng(0)
    pairs = [
        (u, i) for u in users for i in touched.get(u, []) + [items[int(j)] for j in rng.integers(0, len(items), 5)]
    ]
    candidates = pl.DataFrame(pairs, schema={"user_id": pl.String, "item_id": pl.String}, orient="row")
    past = events.filter(pl.col("event_time") < cutoff)
    rows = assemble_propensity(candidates, propensity_tables(past, catalog, cutoff, candidates))
    expected = python_model.predict(None, rows.select("item_id", "category", "brand", *PROPENSITY_DENSE).to_pandas())[
        "probability"
    ].to_numpy(dtype=float)
    bodies, starts = [], []
    for user in users:
        mine = [{"user_id": u, "item_id": i} for u, i in pairs if u == user]
        if mine:
            starts.append(sum(len(b["candidates"]) for b in bodies))
            bodies.append({"candidates": mine})
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post("purchase_probability", b), bodies))
    served = np.concatenate([np.asarray(a["probabilities"], dtype=float) for a, _ in answers])
    return compare_served(
        served,
        expected,
        SCORE_TOLERANCE,
        answers,
        lambda i: f"user_id {pairs[i][0]} item {pairs[i][1]}",
        "offline features give",
    )


FLOOR_FILES = {
    "logistic_regression": ("logreg", "baseline/logreg.joblib"),
    "lightgbm": ("lightgbm", "baseline/lightgbm.json"),
}


def floor_model(
    name: str, dataset: Dataset, split: TimeSplit, run_params: dict[str, str], workdir, client=None, run_id: str = ""
) -> dict:
    """The run's baseline ``name`` (its ``baseline/`` file) as the family's pyfunc
    (``FloorPyfunc``): the arguments of ``mlflow.pyfunc.log_model``."""
    from pipeline.core.tracking import REPO_ROOT
    from pipeline.families.purchase_propensity.pyfunc import FloorPyfunc

    if name not in FLOOR_FILES:
        raise ValueError(f"purchase_propensity has no floor model {name!r}; floors: {', '.join(FLOOR_FILES)}")
    key, artifact = FLOOR_FILES[name]
    local = baseline_file(client, run_id, artifact.removeprefix("baseline/"), workdir)
    return {
        "python_model": FloorPyfunc(),
        "artifacts": {key: local},
        "code_paths": [str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
    }
