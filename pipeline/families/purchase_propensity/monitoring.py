"""How the purchase-propensity model's served probabilities are judged and its inputs watched.

``pipeline.lifecycle.monitor`` calls these through ``MONITORING``: AUC, log loss and calibration
of the served probabilities against the purchases that followed, the drift of the feature rows of
the day against the training rows, the skew of the snapshot's aggregates, and a day of raw
sessions as requests for ``python -m pipeline replay``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.data.drift import FeatureDrift, FeatureSkew, numeric_drift
from pipeline.families.base import auc
from pipeline.families.purchase_propensity.evaluation import propensity_metrics
from pipeline.families.purchase_propensity.features import (
    PROPENSITY_DENSE,
    assemble_propensity,
    propensity_rows,
    propensity_tables,
)
from pipeline.families.purchase_propensity.serving import propensity_inputs
from pipeline.families.spec import Monitoring

MAX_CANDIDATES = 20  # candidates per replayed session


def outcomes(answers: pl.DataFrame, events: pl.DataFrame, policy) -> pl.DataFrame:
    """One row per served candidate of a known user: its probability and whether the user bought
    the item within ``horizon`` of the answer."""
    horizon = timedelta(hours=policy.horizon_hours)
    served = (
        answers.filter(pl.col("user_id") != "")
        .explode("items", "scores")
        .rename({"items": "item_id", "scores": "probability"})
    )
    bought = events.filter(pl.col("event_type") == "purchase").select(
        "user_id", "item_id", pl.col("event_time").alias("bought_at")
    )
    labelled = (
        served.join(bought, on=["user_id", "item_id"], how="left")
        .with_columns(
            ((pl.col("bought_at") > pl.col("ts")) & (pl.col("bought_at") <= pl.col("ts") + horizon))
            .fill_null(False)
            .alias("_in")
        )
        # One row per answer and candidate: a shadow's or a floor's answer to the same request is
        # another row, never merged into the champion's.
        .group_by("request_id", "role", "model_version", "item_id", maintain_order=True)
        .agg(pl.col("ts", "user_id", "probability").first(), pl.col("_in").any().cast(pl.Float64).alias("label"))
    )
    return labelled.select("request_id", "ts", "user_id", "model_version", "role", "item_id", "probability", "label")


def figures(outcomes: pl.DataFrame, policy) -> dict[str, float]:
    """The offline evaluation's figures (AUC, log loss, expected calibration error) over every
    served candidate, with its mean probability and purchase rate."""
    p = outcomes["probability"].to_numpy().astype(float)
    y = outcomes["label"].to_numpy().astype(float)
    return {
        **propensity_metrics(y, p),
        "mean_probability": float(p.mean()),
        "purchase_rate": float(y.mean()),
        "users": float(outcomes["user_id"].n_unique()),
        "candidates": float(len(y)),
    }


def input_drift(reference: pl.DataFrame, current: pl.DataFrame, policy) -> list[FeatureDrift]:
    return [
        numeric_drift(f, reference[f].to_numpy(), current[f].to_numpy(), policy.psi_threshold) for f in PROPENSITY_DENSE
    ]


def drift(
    events: pl.DataFrame, catalog: pl.DataFrame, start: datetime, end: datetime, champion: dict, policy
) -> list[FeatureDrift]:
    """The feature rows at the day's start (the candidates of the lookback before it), built with the
    champion's own horizon and lookback (its run's parameters, not today's params.yaml), against the
    champion's training rows of its latest cutoff."""
    horizon, lookback = (timedelta(days=float(champion["params"][f"data.{k}_days"])) for k in ("horizon", "lookback"))
    reference = pl.read_parquet(Path(champion["features_path"]) / "train.parquet")
    if "cutoff" in reference.columns:
        # The rows of the latest training cutoff: counts grow with the data's age, and the rows of
        # the first cutoffs made a normal day look drifted.
        reference = reference.filter(pl.col("cutoff") == pl.col("cutoff").max())
    current = propensity_rows(events, catalog, start, horizon, lookback)
    return input_drift(reference, current, policy)


def served_scores(answers: pl.DataFrame) -> np.ndarray:
    return answers.select(pl.col("scores").explode()).to_series().drop_nulls().to_numpy()


def pair_skew(snapshot, events: pl.DataFrame, catalog: pl.DataFrame, pairs: pl.DataFrame) -> list[FeatureSkew]:
    """Each dense feature the service looked up for (user, item) pairs against the same recomputed
    from the dataset as of the snapshot's cutoff."""
    pairs = pairs.select("user_id", "item_id").unique(maintain_order=True)
    served = propensity_inputs(snapshot, pairs["user_id"].to_list(), pairs["item_id"].to_list())
    cutoff = snapshot.cutoff
    offline = assemble_propensity(
        pairs, propensity_tables(events.filter(pl.col("event_time") < cutoff), catalog, cutoff, pairs)
    )
    users = pairs["user_id"]
    out = []
    for f in PROPENSITY_DENSE:
        a, b = served[f].to_numpy().astype(float), offline[f].to_numpy().astype(float)
        differs = ~np.isclose(a, b, rtol=1e-6, atol=1e-9)
        skewed = users.filter(pl.Series(differs)).unique()
        out.append(
            FeatureSkew(
                f,
                users.n_unique(),
                skewed.len(),
                f"user_id {skewed[0]}: served {a[differs][0]:.6g}, offline {b[differs][0]:.6g}" if skewed.len() else "",
            )
        )
    return out


def skew(snapshot, events: pl.DataFrame, catalog: pl.DataFrame, answers: pl.DataFrame) -> list[FeatureSkew]:
    """The day's served (user, item) pairs (or, without a log, the snapshot's first two thousand)."""
    pairs = (
        answers.filter(pl.col("user_id") != "")
        .explode("items")
        .select("user_id", pl.col("items").alias("item_id"))
        .head(20_000)
    )
    if pairs.height == 0:
        pairs = snapshot.tables["user_item"].select("user_id", "item_id").head(2000)
    return pair_skew(snapshot, events, catalog, pairs)


def requests(events: pl.DataFrame) -> list[tuple[str, dict]]:
    """(event time, body) per session: its user and the items it viewed or carted, at its last one."""
    browsing = events.filter(pl.col("event_type").is_in(["view", "add_to_cart"]))
    sessions = (
        browsing.group_by("session_id")
        .agg(
            pl.col("user_id").first(),
            pl.col("event_time").max(),
            pl.col("item_id").unique(maintain_order=True).head(MAX_CANDIDATES),
        )
        .sort("event_time", "session_id")
    )
    return [
        (r["event_time"].isoformat(), {"candidates": [{"user_id": r["user_id"], "item_id": i} for i in r["item_id"]]})
        for r in sessions.iter_rows(named=True)
    ]


def statistic(frame: pl.DataFrame):
    """AUC of the probabilities at the given rows against those rows' labels."""
    labels = frame["label"].to_numpy()
    return lambda values, rows: auc(labels[rows], values)


def references(answers: pl.DataFrame, events: pl.DataFrame, champion: dict, snapshot, policy) -> pl.DataFrame:
    """The logistic-regression floor of the champion's run on the very candidates the champion
    scored, with the features the service looked up for them (the champion's snapshot)."""
    import tempfile

    from pipeline.families.purchase_propensity.evaluation import logreg_probabilities

    asked = answers.filter(
        (pl.col("role") == "champion") & (pl.col("model_version") == champion["version"]) & (pl.col("user_id") != "")
    )
    if asked.height == 0 or snapshot is None:
        return asked.clear()
    pairs = asked.with_row_index("_a").explode("items").select("_a", "user_id", pl.col("items").alias("item_id"))
    dense = propensity_inputs(snapshot, pairs["user_id"].to_list(), pairs["item_id"].to_list())
    with tempfile.TemporaryDirectory() as tmp:
        probs = logreg_probabilities(
            champion["client"],
            champion["run"].info.run_id,
            dense.select(*PROPENSITY_DENSE).to_numpy().astype(np.float32),
            tmp,
        )
    scored = (
        pairs.with_columns(pl.Series("p", probs.astype(float))).group_by("_a", maintain_order=True).agg(pl.col("p"))
    )
    return (
        asked.with_row_index("_a")
        .join(scored, on="_a", how="left")
        .drop("_a", "scores")
        .rename({"p": "scores"})
        .with_columns(pl.lit("floor").alias("role"), pl.lit("logistic_regression").alias("model_version"))
        .select(asked.columns)
    )


MONITORING = Monitoring(
    outcomes=outcomes,
    figures=figures,
    headline=lambda policy: ("auc", "log_loss", "calibration_error", "mean_probability", "purchase_rate"),
    drift=drift,
    served_scores=served_scores,
    skew=skew,
    requests=requests,
    value_column="probability",
    pair_keys=("request_id", "item_id"),
    statistic=statistic,
    references=references,
    protocol=lambda policy: f"served candidates bought within {policy.horizon_hours:g} h",
)
