"""How the fraud scores served are judged once their labels mature, and its inputs watched.

``pipeline.lifecycle.monitor`` calls these through ``MONITORING``. A served order is labelled fraud
when its chargeback arrives within ``horizon_hours`` of the answer (the label maturity window,
``monitoring.fraud.horizon_hours``, 30 days by default), genuine otherwise; the monitor judges a
day only once the published data reaches that far past it, and marks its figures provisional
before (an order without a chargeback yet is not yet genuine). Figures: AUC-PR, recall at the
daily review budget, the fraud rate and the mean score of the served orders; the same for the
floors of the champion's run (the rules, LightGBM) on the very orders it scored (``references``),
with the champion-minus-floor interval that the retrain rules read. Drift: the day's
order features against the champion's validation orders. Skew: the snapshot's features against the
same recomputed offline. ``requests``: a day's orders as ``/score`` bodies (``python -m pipeline
replay``). The order id the shop sends is the session id of the purchase in its event stream, so
the chargeback of that session judges the answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.data.drift import FeatureDrift, FeatureSkew, numeric_drift
from pipeline.families.fraud import decisions
from pipeline.families.fraud.orders import DENSE, order_features, orders_of
from pipeline.families.spec import Monitoring


def outcomes(answers: pl.DataFrame, events: pl.DataFrame, policy) -> pl.DataFrame:
    """One row per served order and scorer: its score and whether its chargeback arrived within the
    horizon. An order scored more than once by the same version (a checkout's retry, a day replayed
    twice) counts once, at its first answer: counted twice, it would weigh double in AUC-PR and
    take two places in the day's review budget."""
    horizon = timedelta(hours=policy.horizon_hours)
    served = (
        answers.explode("items", "scores")
        .rename({"items": "item_id", "scores": "score"})
        .sort("ts", "request_id", maintain_order=True)
        .unique(subset=["model_version", "role", "item_id"], keep="first", maintain_order=True)
    )
    charged = (
        events.filter(pl.col("event_type") == "chargeback")
        .group_by("session_id")
        .agg(pl.col("event_time").min().alias("charged_at"))
    )
    labelled = served.join(charged, left_on="item_id", right_on="session_id", how="left").with_columns(
        ((pl.col("charged_at") > pl.col("ts")) & (pl.col("charged_at") <= pl.col("ts") + horizon))
        .fill_null(False)
        .cast(pl.Float64)
        .alias("label"),
        pl.col("user_id").fill_null(""),
    )
    return labelled.select("request_id", "ts", "user_id", "model_version", "role", "item_id", "score", "label")


def figures(outcomes: pl.DataFrame, policy) -> dict[str, float]:
    scores = outcomes["score"].to_numpy().astype(float)
    labels = outcomes["label"].to_numpy().astype(float)
    budget = decisions.load_cost_policy().review_budget_per_day
    return {
        "auc_pr": decisions.average_precision(labels, scores),
        "recall_at_budget": decisions.recall_at_budget(scores, labels, outcomes["ts"].dt.date(), budget),
        "fraud_rate": float(labels.mean()) if labels.size else float("nan"),
        "mean_score": float(scores.mean()) if scores.size else float("nan"),
        "users": float(outcomes["item_id"].n_unique()),  # orders: the unit of the figures
        "orders": float(len(labels)),
    }


def statistic(frame: pl.DataFrame):
    """AUC-PR of the scores at the given rows against those rows' labels."""
    labels = frame["label"].to_numpy()
    return lambda values, rows: decisions.average_precision(labels[rows], values)


def drift(
    events: pl.DataFrame, catalog: pl.DataFrame, start: datetime, end: datetime, champion: dict, policy
) -> list[FeatureDrift]:
    """The features of the day's orders against the champion's validation orders: the period nearest
    to serving that it was tuned on (its bands). Not its training orders: the 7- and 30-day counts
    grow while a shop's history is shorter than the window, so early training orders look unlike
    any later day."""
    reference = pl.read_parquet(Path(champion["features_path"]) / "valid.parquet")
    past = events.filter(pl.col("event_time") < end)
    current = order_features(orders_of(past), past).filter(pl.col("order_time") >= start)
    return [numeric_drift(f, reference[f].to_numpy(), current[f].to_numpy(), policy.psi_threshold) for f in DENSE]


def served_scores(answers: pl.DataFrame) -> np.ndarray:
    return answers.select(pl.col("scores").explode()).to_series().drop_nulls().to_numpy()


def skew(snapshot, events: pl.DataFrame, catalog: pl.DataFrame, answers: pl.DataFrame) -> list[FeatureSkew]:
    """The snapshot's features for orders of its last day (the day's served ones where the log
    names known orders) against ``order_features`` over the events: orders before the cutoff only,
    the service's memory of newer orders left out on both sides."""
    from pipeline.families.fraud.evaluation import order_body
    from pipeline.families.fraud.serving import Order, OrderScorer, order_frame

    cutoff = snapshot.cutoff
    past = events.filter(pl.col("event_time") < cutoff)
    features = order_features(orders_of(past), past)
    asked = answers.explode("items")["items"].to_list() if answers.height else []
    rows = features.filter(pl.col("session_id").is_in(asked))
    if rows.height == 0:
        rows = features.filter(pl.col("order_time") >= cutoff - timedelta(days=1)).head(2000)
    if rows.height == 0:
        return []
    frame = order_frame([Order(**order_body(r)) for r in rows.to_dicts()])
    served = OrderScorer(None, snapshot, "memory").feature_rows(frame)
    users = rows["user_id"]
    out = []
    for f in DENSE:
        a, b = served[f].to_numpy().astype(float), rows[f].to_numpy().astype(float)
        differs = ~np.isclose(a, b, rtol=1e-6, atol=1e-9)
        skewed = users.filter(pl.Series(differs)).unique()
        example = ""
        if skewed.len():
            first = rows["session_id"].filter(pl.Series(differs))[0]
            example = f"order {first}: served {a[differs][0]:.6g}, offline {b[differs][0]:.6g}"
        out.append(FeatureSkew(f, users.n_unique(), skewed.len(), example))
    return out


def requests(events: pl.DataFrame) -> list[tuple[str, dict] | tuple[str, dict, str]]:
    """The day as the shop's services would report it, in time order: (order time, body) per order,
    as a checkout sends it to ``/score``; (time, body, ``signups``) per account opened, as the
    sign-up form reports it (an account opened after the served snapshot is otherwise unknown);
    (time, body, ``chargebacks``) per order charged back that day: the order, its account and the
    time, as the shop's chargeback feed has them (the service fills in the device and card it saw
    the order with, ``OrderScorer.complete_chargebacks``); and (time, body, ``sessions``) per
    session begun without an order, as the storefront sees it begin (an account that browsed
    before its first order is otherwise a first visit)."""
    from pipeline.families.fraud.evaluation import order_body

    fields = ("device_id", "country", "payment_id")

    def reported(rows: pl.DataFrame, endpoint: str) -> list[tuple[str, dict, str]]:
        """A sign-up or a session per row (``event_time``, ``user_id`` and ``fields``), as its body."""
        return [
            (
                r["event_time"].isoformat(),
                {
                    endpoint: [
                        {"user_id": r["user_id"], "time": r["event_time"].isoformat()}
                        | {k: r[k] for k in fields if r.get(k) is not None}
                    ]
                },
                endpoint,
            )
            for r in rows.to_dicts()
        ]

    signups = reported(events.filter(pl.col("event_type") == "signup").sort("event_time"), "signups")
    # The account is the shop's own record of the order; its device and card, the service's.
    disputed = (
        events.filter(pl.col("event_type") == "chargeback")
        .group_by("session_id")
        .agg(pl.col("event_time").min(), pl.col("user_id").sort_by("event_time").first())
        .sort("event_time", "session_id")
    )
    notices: list[tuple[str, dict, str]] = [
        (
            r["event_time"].isoformat(),
            {
                "chargebacks": [
                    {"order_id": r["session_id"], "time": r["event_time"].isoformat(), "user_id": r["user_id"]}
                ]
            },
            "chargebacks",
        )
        for r in disputed.to_dicts()
    ]
    orders: list[tuple[str, dict]] = [
        (r["order_time"].isoformat(), {"orders": [order_body(r)]}) for r in orders_of(events).to_dicts()
    ]
    # Sessions without an order, at their start, as the storefront sees them begin.
    ordered = events.filter(pl.col("event_type") == "purchase")["session_id"].unique().implode()
    browsed = (
        events.filter(~pl.col("event_type").is_in(["signup", "chargeback"]) & ~pl.col("session_id").is_in(ordered))
        .group_by("session_id")
        .agg(pl.col("event_time").min(), pl.col("user_id").first(), *(pl.col(k).drop_nulls().first() for k in fields))
        .sort("event_time", "session_id")
    )
    visits = reported(browsed, "sessions")
    # Sign-ups, chargebacks and sessions before an order at the same instant (sorted is stable; an
    # order counts no chargeback of its very microsecond, whichever comes first).
    happened: list[tuple[str, dict] | tuple[str, dict, str]] = [*signups, *notices, *visits, *orders]
    return sorted(happened, key=lambda request: datetime.fromisoformat(request[0]))


def run_floors(run: dict) -> dict:
    """The floors a run fitted beside its model (``baseline/<floor>.json``, checked against the
    digests the run recorded), by name: ``FraudPyfunc`` scorers with their own bands."""
    import tempfile

    from pipeline.core.integrity import baseline_folder
    from pipeline.families.fraud.evaluation import FLOORS
    from pipeline.families.fraud.pyfunc import FraudPyfunc

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(baseline_folder(run["client"], run["run"].info.run_id, Path(tmp)))
        return {name: FraudPyfunc.from_file(folder / f"{name}.json") for name in FLOORS}


def references(answers: pl.DataFrame, events: pl.DataFrame, champion: dict, snapshot, policy) -> pl.DataFrame:
    """The floors of the champion's run (``baseline/rules.json``, ``baseline/lightgbm.json``: the
    rules and LightGBM fitted beside the model, each with its own bands) scoring the very orders the
    champion scored, so that the online figures and the retrain rule compare them on the same rows.
    Each order's features are those as of its time, recomputed from the published events (what the
    service computes from its snapshot and the orders scored since; the parity test checks it order
    by order). An order the events do not hold (an id that is no session of the event stream) is
    left out of the floors' answers, and so of the pairs: no chargeback will ever judge it."""
    asked = answers.filter((pl.col("role") == "champion") & (pl.col("model_version") == champion["version"]))
    if asked.height == 0:
        return asked.clear()
    ids = asked.select(pl.col("items").explode().drop_nulls().unique())["items"]
    every = orders_of(events)
    if not every["session_id"].is_in(ids.implode()).any():
        return asked.clear()
    # Velocity counts need every earlier order, so the features are computed over all of them.
    rows = order_features(every, events).filter(pl.col("session_id").is_in(ids.implode()))
    known = rows["session_id"].to_list()
    out = []
    for name, floor in run_floors(champion).items():
        score = dict(zip(known, floor.scores(rows).tolist(), strict=True))
        items = [[i for i in request if i in score] for request in asked["items"].to_list()]
        out.append(
            asked.with_columns(
                pl.Series("items", items, dtype=pl.List(pl.String)),
                pl.Series("scores", [[score[i] for i in request] for request in items], dtype=pl.List(pl.Float64)),
                pl.lit("floor").alias("role"),
                pl.lit(name).alias("model_version"),
            ).filter(pl.col("items").list.len() > 0)
        )
    return pl.concat(out)


def offline_orders(model, dataset, split, policy, run: dict) -> pl.DataFrame:
    """The online protocol run offline on the run's test orders: each order of the test period is a
    request of one order, with its features as of its time (what ``/score`` computes), judged by the
    online rule: fraud when its chargeback arrives within ``horizon_hours`` of the order, genuine
    otherwise, among the orders whose horizon ends by the data's end (``split.end``; a later order
    is left out, never counted as genuine). The candidate's pyfunc (role ``candidate``) and the
    run's floors (role ``floor``, the rules and LightGBM with their own bands) score the same
    orders; their outcomes (``outcomes``' rows). The gate's figures label the same orders as known
    at the data's end (a chargeback later than the horizon still counts there), so the two differ
    by the chargebacks that arrive between the horizon and the data's end."""
    from pipeline.families.base import predict_batches
    from pipeline.families.fraud.evaluation import split_of_run

    fraud = split_of_run(run["run"].data.params)
    events = dataset.events().filter(pl.col("event_time") < fraud.end)
    horizon = timedelta(hours=policy.horizon_hours)
    judged = (
        (pl.col("order_time") >= fraud.test_start)
        & (pl.col("order_time") < fraud.test_end)
        & (pl.col("order_time") + horizon <= fraud.end)
    )
    every = orders_of(events)
    if not every.filter(judged).height:
        return pl.DataFrame()
    # Velocity counts need every earlier order, so the features are computed over all of them.
    rows = order_features(every, events).filter(judged)
    asked = rows.select(
        pl.col("session_id").alias("request_id"),
        pl.col("order_time").alias("ts"),
        pl.col("user_id").cast(pl.String).fill_null(""),
        pl.concat_list("session_id").alias("items"),
    )
    inputs = rows.select(DENSE).to_pandas()
    answers = [("candidate", "candidate", predict_batches(model, inputs, 20_000)["score"].to_numpy(np.float64))]
    answers += [("floor", name, floor.scores(inputs)) for name, floor in run_floors(run).items()]
    return outcomes(
        pl.concat(
            asked.with_columns(
                pl.Series("scores", [[float(v)] for v in values], dtype=pl.List(pl.Float64)),
                pl.lit(role).alias("role"),
                pl.lit(name).alias("model_version"),
            )
            for role, name, values in answers
        ),
        events,
        policy,
    )


MONITORING = Monitoring(
    outcomes=outcomes,
    figures=figures,
    headline=lambda policy: ("auc_pr", "recall_at_budget", "fraud_rate", "mean_score", "orders"),
    drift=drift,
    served_scores=served_scores,
    skew=skew,
    requests=requests,
    value_column="score",
    pair_keys=("request_id", "item_id"),
    statistic=statistic,
    references=references,
    offline=offline_orders,
    protocol=lambda policy: (
        f"served orders charged back within {policy.horizon_hours / 24:g} days (the maturity window)"
    ),
    offline_protocol="the same, on the test period's orders whose window ends by the data's end",
    # An order's velocity counts include the orders the service scored before it: a replay that
    # sent a card-testing burst concurrently would score its orders before their predecessors were
    # remembered (the demo's day: 10 of 193 orders, all frauds, scored 0 instead of 5 by the rules).
    in_order=True,
)
