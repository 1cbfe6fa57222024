"""How the next-item recommender's served answers are judged and its inputs watched.

``pipeline.lifecycle.monitor`` calls these through ``MONITORING`` (the family's ``ModelSpec``):
the online hit rate and NDCG of the served lists against the users' next steps, the drift of what
users touch against the training period, the skew of the snapshot's histories, and a day of raw
sessions as requests for ``python -m pipeline replay``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import polars as pl

from pipeline.data.dataset import SEQUENCE_EVENT_TYPES, TimeSplit
from pipeline.data.drift import FeatureDrift, FeatureSkew, categorical_drift, numeric_drift
from pipeline.families.base import predict_batches
from pipeline.families.next_item.evaluation import FLOOR_WINDOWS, HISTORY_LEN, floor_pyfuncs
from pipeline.families.next_item.features import user_histories, user_steps
from pipeline.families.spec import Monitoring

REPLAY_K = 10


def outcomes(answers: pl.DataFrame, events: pl.DataFrame, policy) -> pl.DataFrame:
    """One row per answer to a known user whose next step came within the horizon: that item,
    its 0-based rank in the served top k (null when absent), hit and NDCG at k.

    The next step is the user's first step (repeats in a row collapsed, as in training) strictly
    after the answer's time and at most ``horizon_hours`` later; an answer with none has no outcome
    (the user left). Whether the horizon has passed in the data is the caller's to check
    (``pipeline.lifecycle.monitor``: a day is judged only then)."""
    k, horizon = policy.k, timedelta(hours=policy.horizon_hours)
    steps = user_steps(events).rename({"event_time": "next_time", "item_id": "next_item"}).sort("next_time")
    asked = answers.filter(pl.col("user_id") != "").sort("ts")
    joined = (
        asked.join_asof(
            steps,
            left_on="ts",
            right_on="next_time",
            by="user_id",
            strategy="forward",
            tolerance=horizon,
            allow_exact_matches=False,
            check_sortedness=False,
        )
        .filter(pl.col("next_item").is_not_null())
        .with_row_index("_r")
    )
    # The target's 0-based position in the served top k (null when it is not there).
    positions = (
        joined.select("_r", "next_item", pl.col("items").list.head(k))
        .explode("items")
        .with_columns(pl.int_range(pl.len()).over("_r").alias("rank"))
        .filter(pl.col("items") == pl.col("next_item"))
        .group_by("_r")
        .agg(pl.col("rank").min())
    )
    return (
        joined.join(positions, on="_r", how="left")
        .with_columns(
            pl.col("rank").is_not_null().cast(pl.Float64).alias("hit"),
            pl.when(pl.col("rank").is_not_null()).then(1.0 / (pl.col("rank") + 2).log(2)).otherwise(0.0).alias("ndcg"),
        )
        .select("request_id", "ts", "user_id", "model_version", "role", "next_item", "rank", "hit", "ndcg")
    )


def figures(outcomes: pl.DataFrame, policy) -> dict[str, float]:
    """Hit rate and NDCG at k per request, averaged per user, then over users."""
    k = policy.k
    per_user = outcomes.group_by("user_id").agg(pl.col("hit").mean(), pl.col("ndcg").mean())
    return {
        f"hit_rate_at_{k}": float(per_user["hit"].mean() or 0.0),
        f"ndcg_at_{k}": float(per_user["ndcg"].mean() or 0.0),
        "users": float(per_user.height),
        "requests": float(outcomes.height),
    }


def input_drift(reference: pl.DataFrame, current: pl.DataFrame, catalog: pl.DataFrame, policy) -> list[FeatureDrift]:
    """The recommender's inputs: how popular (in the training period) the items users touch are,
    their categories, event types and prices, and the length of sessions.

    Items are compared by popularity band, not one by one: ten bands of equal training traffic
    (the most popular items first) and one band of items the training period never saw. With
    thousands of items, item-level divergence between a training period and one day is mostly
    sampling noise; the bands keep what matters: new items taking the traffic, or the head of the
    catalog losing it.
    """
    counts = reference.group_by("item_id").len().sort("len", "item_id", descending=[True, False])
    share = counts["len"].cum_sum() / max(counts["len"].sum(), 1)
    bands = counts.select(
        "item_id", (share * 10).ceil().clip(1, 10).cast(pl.Int64).cast(pl.String).str.zfill(2).alias("item_band")
    )

    def enrich(events: pl.DataFrame) -> pl.DataFrame:
        return (
            events.join(catalog.select("item_id", "category", "price"), on="item_id", how="left")
            .join(bands, on="item_id", how="left")
            .with_columns(pl.col("item_band").fill_null("new item"))
        )

    ref, cur = enrich(reference), enrich(current)
    sessions = [e.group_by("session_id").len()["len"].to_numpy() for e in (ref, cur)]
    return [
        categorical_drift("item popularity band", ref["item_band"], cur["item_band"], policy.js_threshold),
        categorical_drift(
            "category",
            ref["category"].fill_null("(unknown)"),
            cur["category"].fill_null("(unknown)"),
            policy.js_threshold,
        ),
        categorical_drift("event_type", ref["event_type"], cur["event_type"], policy.js_threshold),
        numeric_drift(
            "price", ref["price"].drop_nulls().to_numpy(), cur["price"].drop_nulls().to_numpy(), policy.psi_threshold
        ),
        numeric_drift("session_length", sessions[0], sessions[1], policy.psi_threshold),
    ]


def drift(
    events: pl.DataFrame, catalog: pl.DataFrame, start: datetime, end: datetime, champion: dict, policy
) -> list[FeatureDrift]:
    """The day's events against the champion's training period (its run's split)."""
    split = champion["split"]
    reference = events.filter(
        (pl.col("event_time") >= datetime.fromisoformat(split["start"]))
        & (pl.col("event_time") < datetime.fromisoformat(split["train_end"]))
    )
    day = events.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
    return input_drift(reference, day, catalog, policy)


def served_scores(answers: pl.DataFrame) -> np.ndarray:
    """The top score of each served list."""
    return answers.select(pl.col("scores").list.first()).to_series().drop_nulls().to_numpy()


def user_skew(snapshot, events: pl.DataFrame, users: list[str]) -> list[FeatureSkew]:
    """The served history and purchases of each user (snapshot lookups) against the same recomputed
    from the dataset's events before the snapshot's cutoff."""
    from pipeline.families.next_item.serving import Histories

    served = snapshot.view(Histories)
    users = [u for u in users if served.knows(u)]
    offline = user_histories(
        events.filter((pl.col("event_time") < snapshot.cutoff) & pl.col("user_id").is_in(users)), HISTORY_LEN
    )
    offline_rows = {r["user_id"]: r for r in offline.iter_rows(named=True)}
    out = []
    for feature, served_of in (("history", served.history), ("purchased", served.purchased)):
        skewed = [
            u
            for u in users
            if served_of(u)
            != list((offline_rows.get(u) or {}).get("items" if feature == "history" else "purchased") or [])
        ]
        out.append(FeatureSkew(feature, len(users), len(skewed), f"user_id {skewed[0]}" if skewed else ""))
    return out


def skew(snapshot, events: pl.DataFrame, catalog: pl.DataFrame, answers: pl.DataFrame) -> list[FeatureSkew]:
    """The day's served users (or, without a log, the snapshot's first thousand)."""
    users = (
        answers.filter(pl.col("user_id") != "")["user_id"].unique().sort().to_list()
        or snapshot.tables["histories"]["user_id"].head(1000).to_list()
    )
    return user_skew(snapshot, events, users[:5000])


def requests(events: pl.DataFrame, k: int = REPLAY_K) -> list[tuple[str, dict]]:
    """(event time, body) per session step: the user's id and the session's steps so far (a cart
    after a view of the same item is one step, as in training), newest last."""
    steps = events.filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES)).sort("session_id", "event_time", "item_id")
    out, session, history = [], None, []
    for row in steps.iter_rows(named=True):
        if row["session_id"] != session:
            session, history = row["session_id"], []
        if history and history[-1] == row["item_id"]:
            continue
        history.append(row["item_id"])
        out.append((row["event_time"].isoformat(), {"user_id": row["user_id"], "history": history[-50:], "k": k}))
    return sorted(out, key=lambda r: r[0])


def statistic(frame: pl.DataFrame):
    """The online figure's statistic of per-request values: the mean per user, then over users
    (``figures``' unit). Each row weighs 1 / its user's rows, so a bootstrap resample of whole users
    (a user drawn twice counts twice) gives the same statistic as the figure."""
    users = frame["user_id"].to_numpy()
    _, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return lambda values, rows: float(np.sum(values * weights[rows]) / np.sum(weights[rows]))


def _floor_answers(
    asked: pl.DataFrame, histories: list[list[str]], events: pl.DataFrame, split: TimeSplit, k: int
) -> pl.DataFrame:
    """Each floor's answer to the requests of ``asked`` given ``histories`` (the input the model had):
    rows like ``asked``'s with role ``floor`` and the floor's name as the version."""
    inputs = pd.DataFrame({"history": histories, "k": k})
    out = []
    for name, floor in floor_pyfuncs(FLOOR_WINDOWS, events, split).items():
        # a PythonModel: predict(context, frame)
        predicted = predict_batches(
            SimpleNamespace(predict=lambda frame, f=floor: f.predict(None, frame)), inputs, 1024
        )
        out.append(
            asked.with_columns(
                pl.lit("floor").alias("role"),
                pl.lit(name).alias("model_version"),
                pl.Series("items", predicted["items"].tolist(), dtype=pl.List(pl.String)),
                pl.Series("scores", predicted["scores"].tolist(), dtype=pl.List(pl.Float64)),
                pl.Series("source", predicted["source"].tolist(), dtype=pl.String),
            )
        )
    return pl.concat(out, how="diagonal_relaxed") if out else asked.clear()


def references(answers: pl.DataFrame, events: pl.DataFrame, champion: dict, snapshot, policy) -> pl.DataFrame:
    """The floors (popularity, co-occurrence) answering the very requests the champion answered:
    counted on the champion's own training data (its run's split: sequences before its test
    period, its training vocabulary) and given the input the service gave the model (the snapshot's
    history of the user, then what the request sent: ``Histories.served_history``)."""
    from pipeline.families.next_item.serving import Histories

    asked = answers.filter(
        (pl.col("role") == "champion") & (pl.col("model_version") == champion["version"]) & (pl.col("user_id") != "")
    )
    if asked.height == 0:
        return asked
    sent = asked["history"].fill_null([]).to_list() if "history" in asked.columns else [[]] * asked.height
    users = asked["user_id"].to_list()
    served = snapshot.view(Histories) if snapshot is not None else None
    histories = [
        served.served_history(u, h) if served is not None else list(h)[-HISTORY_LEN:]
        for u, h in zip(users, sent, strict=True)
    ]
    return _floor_answers(asked, histories, events, TimeSplit.from_dict(champion["split"]), policy.k)


def offline_session(model, dataset, split: TimeSplit, policy, run: dict | None = None) -> pl.DataFrame:
    """The online protocol run offline on the held-out sessions of the test period: every step of
    every session is a request (the user's history before the test period, as a snapshot would hold
    it, then the session so far: ``requests``), its outcome the user's next step within the horizon,
    only for requests whose horizon ends inside the test period (none censored). The model
    (``model``, the candidate's pyfunc; role ``candidate``) and the floors (role ``floor``, the
    floor's name as the version) answer the same requests; their outcomes (``outcomes``' rows).
    The floors are fitted on the dataset's training period here, so ``run`` is not read."""
    events = dataset.events().filter(pl.col("event_time") < split.end)
    test = events.filter(pl.col("event_time") >= split.valid_end)
    horizon = timedelta(hours=policy.horizon_hours)
    asked = [(datetime.fromisoformat(t), b) for t, b in requests(test, policy.k)]
    asked = [(t, b) for t, b in asked if t + horizon <= split.end]
    if not asked:
        return pl.DataFrame()
    users = [b["user_id"] for _, b in asked]
    before = user_histories(
        events.filter((pl.col("event_time") < split.valid_end) & pl.col("user_id").is_in(list(set(users)))), HISTORY_LEN
    )
    known = dict(zip(before["user_id"].to_list(), before["items"].to_list(), strict=True))
    histories = [(list(known.get(b["user_id"]) or []) + b["history"])[-HISTORY_LEN:] for _, b in asked]
    frame = pl.DataFrame(
        {
            "request_id": [str(i) for i in range(len(asked))],
            "ts": [t for t, _ in asked],
            "user_id": users,
            "role": "candidate",
            "model_version": "candidate",
        }
    )
    predicted = predict_batches(model, pd.DataFrame({"history": histories, "k": policy.k}), 1024)
    served = frame.with_columns(pl.Series("items", predicted["items"].tolist(), dtype=pl.List(pl.String)))
    floors = _floor_answers(frame, histories, events, split, policy.k)
    return outcomes(pl.concat([served, floors.select(served.columns)]), events, policy)


MONITORING = Monitoring(
    outcomes=outcomes,
    figures=figures,
    headline=lambda policy: (f"hit_rate_at_{policy.k}", f"ndcg_at_{policy.k}"),
    drift=drift,
    served_scores=served_scores,
    skew=skew,
    requests=requests,
    value_column="hit",
    pair_keys=("request_id",),
    statistic=statistic,
    references=references,
    offline=offline_session,
    protocol=lambda policy: f"next step within {policy.horizon_hours:g} h of each request",
    offline_protocol="the same, on the held-out sessions of the test period",
)
