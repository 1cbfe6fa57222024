"""How a fraud scorer is judged: on the test orders labelled as known at the data's end, each scorer
deciding with its own bands (chosen on validation at training), under today's ``fraud_costs``.

Figures per scorer: AUC-PR, recall at the daily review budget, expected cost per 1,000 orders (and
reviews and blocks a day, the share of frauds stopped, its thresholds). The gate compares the cost
per order (``cost``, lower is better) or AUC-PR or recall at the budget, resampling orders: the
candidate, the champion and the floors (``rules``, ``lightgbm``) decide the very same orders.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.integrity import baseline_file, baseline_folder
from pipeline.data.dataset import Dataset, TimeSplit
from pipeline.families.base import ModelScores, TestSet, compare_served, latency_p95, per_slice, predict_batches
from pipeline.families.fraud import decisions
from pipeline.families.fraud.orders import DENSE
from pipeline.families.fraud.split import FraudSplit
from pipeline.families.spec import ParityOutcome, Post

SCORE_TOLERANCE = 1e-5  # |served - evaluated| score: the same scorer on the same features (float32)
ORDERS_PER_REQUEST = 20
FLOORS = ("rules", "lightgbm")
ORDER_FIELDS = ("user_id", "device_id", "ip", "country", "payment_id")


def split_of_run(run_params: dict[str, str]) -> FraudSplit:
    """The run's own cut points (``split.*``), gaps included."""
    try:
        return FraudSplit(**{k: datetime.fromisoformat(run_params[f"split.{k}"]) for k in FraudSplit.__annotations__})
    except KeyError as exc:
        raise BadInput(f"the run records no fraud split (param split.{exc.args[0]} is missing)") from None


def test_set(dataset: Dataset, split: TimeSplit, run_params: dict[str, str]) -> TestSet:
    """The run's test orders, rebuilt from its dataset version at its own cut points, labelled as
    known at the data's end (``split.end``); an order whose label is not known then is left out."""
    from pipeline.families.fraud.features import labelled_features

    fraud = split_of_run(run_params)
    periods, _ = labelled_features(dataset.events(), fraud, int(run_params["data.maturity_days"]))
    rows = periods["test"]
    if rows.height == 0 or rows["label"].sum() == 0:
        raise BadInput(
            f"the test period ({fraud.test_start:%Y-%m-%d} to {fraud.test_end:%Y-%m-%d}) holds "
            f"{rows.height} labelled orders and no fraud: AUC-PR and recall are undefined"
        )
    amounts = rows["amount"].to_numpy()
    cuts = np.quantile(amounts, [1 / 3, 2 / 3])
    day = rows["order_time"].dt.date()
    return TestSet(
        inputs=rows.select(DENSE).to_pandas(),
        users=rows["session_id"].to_numpy().astype(object),  # the bootstrap resamples orders
        slices=pd.DataFrame(
            {
                "account": np.where(
                    rows["account_age_known"].to_numpy() == 0,
                    "sign-up unknown",
                    np.where(rows["account_age_days"].to_numpy() < 1, "new (< 1 day)", "established"),
                ),
                "user_type": np.where(rows["user_seen_before"].to_numpy() > 0, "returning", "new"),
                "amount": np.where(amounts < cuts[0], "low", np.where(amounts < cuts[1], "mid", "high")),
            }
        ),
        labels=rows["label"].to_numpy().astype(np.float64),
        columns={"day": (day - day.min()).dt.total_days().to_numpy()},
        context={
            "amount": amounts,
            "day": day,
            "days": float(run_params.get("data.test_days") or max((fraud.test_end - fraud.test_start).days, 1)),
            "order": rows.select("session_id", "order_time", *ORDER_FIELDS, "amount", "items", "session_start"),
        },
    )


def _metrics(test: TestSet, scores: np.ndarray, costs: np.ndarray, policy, mask=None) -> dict[str, float]:
    labels = test.labels
    assert labels is not None
    day = test.context["day"]
    if mask is not None:
        labels, scores, costs, day = labels[mask], scores[mask], costs[mask], day.filter(pl.Series(mask))
    frauds = labels == 1
    return {
        "auc_pr": decisions.average_precision(labels, scores),
        "recall_at_budget": decisions.recall_at_budget(scores, labels, day, policy.review_budget_per_day),
        "cost_per_1000": float(costs.mean() * 1000) if costs.size else float("nan"),
        "fraud_rate": float(frauds.mean()) if labels.size else float("nan"),
    }


def _scores(test: TestSet, scores: np.ndarray, bands: decisions.Bands, latency=float("nan"), predictions=None):
    policy = decisions.load_cost_policy()
    labels, amounts, days = test.labels, test.context["amount"], test.context["days"]
    assert labels is not None
    costs = decisions.order_costs(bands.decide(scores), labels, amounts, policy)
    metrics = {
        **_metrics(test, scores, costs, policy),
        **decisions.decision_figures(scores, labels, amounts, bands, days, policy),
        "review_at": bands.review_at,
        "block_at": bands.block_at,
    }
    return ModelScores(
        metrics,
        {"cost": costs, "score": scores},
        per_slice(test, lambda m: _metrics(test, scores, costs, policy, m)),
        latency,
        predictions,
    )


def bands_of(model) -> decisions.Bands:
    """A loaded fraud pyfunc's bands (an ``mlflow.pyfunc`` model, or the ``FraudPyfunc`` itself)."""
    inner = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else model
    return inner.bands


def score(model, test: TestSet, batch: int = 20_000) -> ModelScores:
    predictions = predict_batches(model, test.inputs, batch)
    return _scores(
        test,
        predictions["score"].to_numpy(dtype=np.float64),
        bands_of(model),
        latency_p95(model, test.inputs),
        predictions,
    )


def baselines(client, run_id: str, test: TestSet, tmp: Path) -> dict[str, ModelScores]:
    """The rules and LightGBM the run fitted beside the network (``baseline/<floor>.json``), each
    with its own bands, on the same orders."""
    from pipeline.families.fraud.pyfunc import FraudPyfunc

    out = {}
    folder = Path(baseline_folder(client, run_id, tmp))  # checked once, read per floor
    for name in FLOORS:
        floor = FraudPyfunc.from_file(folder / f"{name}.json")
        out[name] = _scores(test, floor.scores(test.inputs), floor.bands)
    return out


def gate_statistic(metric: str, rows: pd.DataFrame):
    """``cost_per_1000``: the resampled orders' mean cost, x 1,000; ``auc_pr`` and
    ``recall_at_budget``: of the scores, with the same orders' labels (and days, for the budget)."""
    if metric == "cost_per_1000":
        return "cost", lambda values, at: float(values.mean() * 1000)
    if metric not in ("auc_pr", "recall_at_budget"):
        return None
    if "label" not in rows:
        raise BadInput(f"metric {metric} needs the evaluation's labels (evaluation/rows.parquet has no label column)")
    labels = rows["label"].to_numpy()
    if metric == "auc_pr":
        return "score", lambda values, at: decisions.average_precision(labels[at], values)
    if "day" not in rows:
        raise BadInput("metric recall_at_budget needs the orders' days (evaluation/rows.parquet has no day column)")
    budget, day = decisions.load_cost_policy().review_budget_per_day, rows["day"].to_numpy()
    return "score", lambda values, at: decisions.recall_at_budget(values, labels[at], day[at], budget)


def floor_model(
    name: str, dataset: Dataset, split: TimeSplit, run_params: dict[str, str], workdir, client=None, run_id: str = ""
) -> dict:
    """Floor ``name`` (the run's ``baseline/<name>.json``) as the family's pyfunc."""
    from pipeline.core.tracking import REPO_ROOT
    from pipeline.families.fraud.pyfunc import FraudPyfunc

    if name not in FLOORS:
        raise ValueError(f"fraud has no floor model {name!r}; floors: {', '.join(FLOORS)}")
    return {
        "python_model": FraudPyfunc(),
        "artifacts": {"scorer": baseline_file(client, run_id, f"{name}.json", workdir)},
        "code_paths": [str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
    }


# Serving checks ----------------------------------------------------------------------------------


def _replay(post: Post, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda b: post("score", b), bodies))


def parity(post: Post, expected: pd.DataFrame) -> ParityOutcome:
    """Replay the evaluated orders' feature rows (sent whole), ``ORDERS_PER_REQUEST`` per request,
    against ``/score``: every score within ``SCORE_TOLERANCE`` of the offline one."""
    records = expected.to_dict("records")
    bodies = [
        {
            "orders": [
                {
                    "order_id": str(r["user_id"]),
                    "user_id": str(r["user_id"]),
                    "order_time": "2000-01-01T00:00:00Z",
                    "amount": float(r["amount"]),
                    "features": {f: float(r[f]) for f in DENSE},
                }
                for r in records[i : i + ORDERS_PER_REQUEST]
            ]
        }
        for i in range(0, len(records), ORDERS_PER_REQUEST)
    ]
    answers = _replay(post, bodies)
    served = np.array([s["score"] for a, _ in answers for s in a["scores"]], dtype=float)
    return compare_served(
        served,
        expected["predicted_score"].to_numpy(dtype=float),
        SCORE_TOLERANCE,
        answers,
        lambda i: f"order {expected['user_id'].iloc[i]}",
    )


def order_body(row: dict) -> dict:
    """An order as ``/score`` takes it, from an offline order row (``orders.orders_of``)."""
    body = {
        "order_id": row["session_id"],
        "order_time": row["order_time"].isoformat(),
        "session_start": row["session_start"].isoformat(),
        "amount": float(row["amount"]),
        "items": float(row["items"]),
    }
    body |= {f: row[f] for f in ORDER_FIELDS if row[f] is not None}
    return body


def order_parity(post: Post, python_model, dataset: Dataset, n: int) -> ParityOutcome:
    """Raw orders (time, amount, user, device, address, card) against the scores of the features
    computed offline with the training code path (``order_features`` over every event), for ``n``
    orders spread over the last days of the data: the served features come from the packaged
    snapshot of earlier orders and first sightings, as of each order's own time."""
    from pipeline.families.base import parity_users
    from pipeline.families.fraud.orders import order_features, orders_of

    events = dataset.events()
    orders = orders_of(events)
    features = order_features(orders, events)
    chosen = parity_users(orders.tail(max(n * 20, 2000))["session_id"].to_list(), n)
    rows = features.filter(pl.col("session_id").is_in(chosen)).sort("order_time", "session_id")
    expected = python_model.scores(rows)
    records = rows.to_dicts()
    bodies = [
        {"orders": [order_body(r) for r in records[i : i + ORDERS_PER_REQUEST]]}
        for i in range(0, len(records), ORDERS_PER_REQUEST)
    ]
    answers = _replay(post, bodies)
    served_by_id = {s["order_id"]: s["score"] for a, _ in answers for s in a["scores"]}
    ids = rows["session_id"].to_list()
    served = np.array([served_by_id.get(i, np.nan) for i in ids], dtype=float)
    return compare_served(
        served, expected, SCORE_TOLERANCE, answers, lambda i: f"order {ids[i]}", "offline features give"
    )


def smoke_checks(post: Post) -> list[str]:
    """A risky order (a card-testing burst) and a plain one: both answered with a band and reasons;
    a negative amount and a missing order time are refused."""
    meta, _ = post("metadata", {})
    bands = meta.get("bands") or {}
    if not {"review_at", "block_at"} <= set(bands):
        raise ValueError(f"/metadata names no decision bands: {meta.get('bands')!r}")
    if "recall_at_budget" not in (meta.get("validation") or {}):
        raise ValueError("/metadata reports no recall at the review budget")
    order = {"user_id": "smoke-user", "order_time": meta["features_as_of"], "amount": 25.0, "device_id": "smoke-device"}
    answer, ms = post("score", {"orders": [order]})
    scored = answer["scores"][0]
    if scored["band"] not in (decisions.APPROVE, decisions.REVIEW, decisions.BLOCK):
        raise ValueError(f"/score answered band {scored['band']!r}")
    return [f"score: one order scored {scored['score']:.4f} ({scored['band']}) in {ms:.0f} ms"]
