"""How a next-item recommender is judged: its test set, its scores, its baseline, its parity check.

Per user active in the test period, the rank of their next item in the model's top 20 (the pyfunc
ranks the full catalog, so Recall@K and NDCG@K are full-ranking metrics), with the catalog coverage
and the popularity bias of the recommendations; the global-popularity baseline beside them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import polars as pl
import torch

from models.baselines import CooccurrenceRecommender
from models.metrics import ranking_values
from pipeline.data.dataset import Dataset, TimeSplit
from pipeline.families.base import ModelScores, TestSet, latency_p95, parity_users, per_slice, predict_batches, slices
from pipeline.families.next_item.features import ItemVocab, next_item_examples, user_histories, user_sequences
from pipeline.families.spec import ParityOutcome, Post

K = 20
HISTORY_LEN = 200  # the longest history sent to a model; each model keeps what it can use


def test_set(dataset: Dataset, split: TimeSplit, run_params: dict[str, str] | None = None) -> TestSet:
    """Each user active in the test period: their history before it (raw ids, as the serving
    snapshot holds it) and their next item: the rows of the training run's own test metrics.

    One vocabulary rule for every side: the items of the training period (before
    ``split.train_end``), the items the candidate could learn. A target outside it (an item first
    seen in the validation or test period) is left out for every model and baseline alike; the
    baselines rank the same vocabulary. Histories are sent as raw ids, items the model does not know
    included, and a user with no known item gets what serving gives (the pyfunc's popularity
    fallback), not the model's guess from an empty history.
    """
    events, catalog = dataset.events(), dataset.catalog()
    before = events.filter(pl.col("event_time") < split.valid_end)
    vocab = ItemVocab.from_events(events.filter(pl.col("event_time") < split.train_end))
    histories = user_sequences(events, vocab, split.valid_end)
    examples, _ = next_item_examples(events, vocab, histories, split.valid_end, split.end, HISTORY_LEN)
    raw = user_histories(before.filter(pl.col("user_id").is_in(examples.users)), HISTORY_LEN)
    raw_of = dict(zip(raw["user_id"].to_list(), raw["items"].to_list(), strict=True))
    targets = np.array(vocab.decode(examples.targets), dtype=object)
    counts = before.filter(pl.col("item_id").is_in(vocab.ids)).group_by("item_id").len()
    # The co-occurrence baseline, counted on every sequence before the test period: what the
    # candidate's own training and test histories could know, never more.
    cooccurrence = CooccurrenceRecommender(vocab.size, list(histories.values()))
    top = (
        []
        if not len(examples.targets)
        else cooccurrence.score(torch.from_numpy(examples.histories))[:, 2:].topk(min(K, vocab.size - 2)).indices + 2
    )
    return TestSet(
        inputs=pd.DataFrame({"history": [list(raw_of.get(u) or []) for u in examples.users], "k": K}),
        users=np.array(examples.users, dtype=object),
        slices=slices(examples.users, pl.Series(targets.tolist(), dtype=pl.String), events, catalog, split.train_end),
        targets=targets,
        catalog_items=len(vocab.ids),
        item_popularity=dict(zip(counts["item_id"].to_list(), counts["len"].to_list(), strict=True)),
        context={"cooccurrence_top": [vocab.decode(row) for row in np.asarray(top)]},
    )


def top_list_values(top_items: list[list[str]], targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row Recall@10/20 and NDCG@10/20 from each row's top-20 list (``models.metrics``)."""
    ranks = np.array([row.index(t) if t in row else K for row, t in zip(top_items, targets, strict=True)])
    return ranking_values(ranks)


def ranking_metrics(values: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    mask = np.ones(len(next(iter(values.values()))), dtype=bool) if mask is None else mask
    return {name: float(v[mask].mean()) if mask.any() else float("nan") for name, v in values.items()}


def score(model, test: TestSet, batch: int = 512) -> ModelScores:
    predictions = predict_batches(model, test.inputs, batch)
    top = [list(row) for row in predictions["items"].tolist()]
    values = top_list_values(top, test.targets)
    metrics = ranking_metrics(values)
    recommended = [item for row in top for item in row]
    metrics["coverage_at_20"] = len(set(recommended)) / max(test.catalog_items, 1)
    # Popularity bias: mean popularity percentile of what is recommended (1.0 = the most popular item).
    counts = np.array(sorted(test.item_popularity.values()))
    pops = np.array([test.item_popularity.get(i, 0) for i in recommended])
    metrics["popularity_bias"] = (
        float(np.searchsorted(counts, pops, side="right").mean() / max(len(counts), 1)) if pops.size else float("nan")
    )
    return ModelScores(
        metrics,
        values,
        per_slice(test, lambda m: ranking_metrics(values, m)),
        latency_p95(model, test.inputs),
        predictions,
    )


def _top_list_scores(test: TestSet, top_items: list[list[str]]) -> ModelScores:
    """A baseline's figures from its top-20 list per test row."""
    values = top_list_values(top_items, test.targets)
    return ModelScores(ranking_metrics(values), values, per_slice(test, lambda m: ranking_metrics(values, m)))


def popularity_scores(test: TestSet) -> ModelScores:
    """The global-popularity baseline on the same test rows (same top 20 for every user)."""
    top = [i for i, _ in sorted(test.item_popularity.items(), key=lambda kv: (-kv[1], kv[0]))[:K]]
    return _top_list_scores(test, [top] * len(test.targets))


def cooccurrence_scores(test: TestSet) -> ModelScores:
    """The item co-occurrence baseline on the same test rows (``models.baselines``)."""
    return _top_list_scores(test, test.context["cooccurrence_top"])


def baselines(client, run_id: str, test: TestSet, tmp) -> dict[str, ModelScores]:
    return {"popularity": popularity_scores(test), "cooccurrence": cooccurrence_scores(test)}


def parity(post: Post, expected: pd.DataFrame) -> ParityOutcome:
    """Replay each evaluated history against ``/recommend``: the same top-k, scores within tolerance
    (the caller compares ``max_abs_diff``)."""
    bodies = [
        {"history": [str(i) for i in h], "k": int(k)} for h, k in zip(expected["history"], expected["k"], strict=True)
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post("recommend", b), bodies))
    mismatches, worst, examples = 0, 0.0, []
    for (answer, _), items, scores, user in zip(
        answers, expected["predicted_items"], expected["predicted_scores"], expected["user_id"], strict=True
    ):
        items, scores = list(items), np.asarray(scores, dtype=float)
        if answer["items"] != items:
            mismatches += 1
            if len(examples) < 3:
                examples.append(f"user {user}: served {answer['items'][:5]}..., evaluated {items[:5]}...")
            continue
        worst = max(worst, float(np.max(np.abs(np.asarray(answer["scores"]) - scores), initial=0.0)))
    return ParityOutcome(mismatches, worst, [t for _, t in answers], examples)


def serving_states(python_model, snapshot, out) -> dict:
    """Every snapshot user's state, encoded once with the packaged model (``pipeline.families.next_item.states``)."""
    from pipeline.families.next_item.states import write_user_states

    histories = snapshot.tables["histories"]
    return write_user_states(python_model, histories["user_id"].to_list(), histories["items"].to_list(), out)


def offline_user_answers(python_model, events: pl.DataFrame, users: list[str], k: int = K) -> pd.DataFrame:
    """What the model answers for these users from the training features of the whole dataset
    version (``user_sequences``, the sequences training and evaluation build; purchases from the
    events): by user id, and by user id leaving out what they bought. The serving side looks the
    same users up in the feature snapshot and the packaged user states; any difference is skew."""
    from pipeline.data.dataset import split_by_time

    cutoff = split_by_time(events, 0, 0).end
    vocab = ItemVocab(tuple(python_model.item_ids))
    sequences = user_sequences(events.filter(pl.col("user_id").is_in(users)), vocab, cutoff)
    max_len = python_model.model.config.max_len
    encoded = np.zeros((len(users), max_len), dtype=np.int64)
    for row, user in enumerate(users):
        seq = sequences.get(user, np.zeros(0, dtype=np.int64))[-max_len:]
        if seq.size:
            encoded[row, -seq.size :] = seq
    bought = (
        events.filter((pl.col("event_type") == "purchase") & pl.col("user_id").is_in(users))
        .group_by("user_id")
        .agg(pl.col("item_id").unique())
    )
    purchased = dict(zip(bought["user_id"].to_list(), bought["item_id"].to_list(), strict=True))
    states = python_model.user_states(torch.from_numpy(encoded))
    plain = python_model.rank(states, [k] * len(users))
    filtered = python_model.rank(states, [k] * len(users), [purchased.get(u, []) for u in users])
    return pd.DataFrame(
        {
            "user_id": users,
            "items": plain["items"],
            "scores": plain["scores"],
            "items_no_purchased": filtered["items"],
            "scores_no_purchased": filtered["scores"],
        }
    )


def user_parity(post: Post, python_model, dataset: Dataset, n: int) -> ParityOutcome:
    """Requests by user id (with and without ``exclude_purchased``) against the answers computed
    offline from the training features of the snapshot's dataset version."""
    from pipeline.data.dataset import SEQUENCE_EVENT_TYPES

    events = dataset.events()  # read once: the users to sample and their offline answers
    stepped = events.filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
    users = parity_users(stepped["user_id"].unique().to_list(), n)
    expected = offline_user_answers(python_model, events, users)
    bodies = [{"user_id": u, "k": K, "exclude_purchased": flag} for u in users for flag in (False, True)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: post("recommend", b), bodies))
    mismatches, worst, examples = 0, 0.0, []
    for (answer, _), body in zip(answers, bodies, strict=True):
        row = expected.iloc[users.index(body["user_id"])]
        suffix = "_no_purchased" if body["exclude_purchased"] else ""
        items, scores = list(row["items" + suffix]), np.asarray(row["scores" + suffix], dtype=float)
        if answer["items"] != items or not answer["user_known"]:
            mismatches += 1
            if len(examples) < 3:
                examples.append(
                    f"user_id {body['user_id']}{' exclude_purchased' if suffix else ''}: served "
                    f"{answer['items'][:5]}..., offline features give {items[:5]}..."
                )
            continue
        worst = max(worst, float(np.max(np.abs(np.asarray(answer["scores"]) - scores), initial=0.0)))
    return ParityOutcome(mismatches, worst, [t for _, t in answers], examples)


def smoke_checks(post: Post) -> list[str]:
    """A user the snapshot does not know gets the popularity fallback."""
    cold, _ = post("recommend", {"user_id": "no-such-user", "k": 5})
    if cold["source"] != "popularity" or len(cold["items"]) != 5:
        raise ValueError(f"a cold-start user was not answered from popularity: {cold}")
    return ["cold start: popularity fallback"]


FLOOR_WINDOWS = {"cooccurrence": 3, "popularity": 0}  # transitions counted: none is popularity alone


def floor_pyfuncs(names, events: pl.DataFrame, split: TimeSplit, max_len: int = HISTORY_LEN) -> dict:
    """The baselines ``names`` (``popularity``, ``cooccurrence``) behind the family's pyfunc, counted
    on what the gate's baseline counts: every sequence before the test period (``split.valid_end``),
    the training-period vocabulary (``models.baselines.CooccurrenceScorer`` in ``SASRecPyfunc``);
    the vocabulary and sequences are built once for all of them."""
    from models.baselines import CooccurrenceScorer
    from pipeline.families.next_item.pyfunc import SASRecPyfunc
    from pipeline.families.next_item.train import POPULAR_KEPT

    unknown = [n for n in names if n not in FLOOR_WINDOWS]
    if unknown:
        raise ValueError(f"next_item has no floor model {unknown[0]!r}; floors: {', '.join(FLOOR_WINDOWS)}")
    vocab = ItemVocab.from_events(events.filter(pl.col("event_time") < split.train_end))
    sequences = list(user_sequences(events, vocab, split.valid_end).values())
    counts = np.bincount(np.concatenate(sequences) if sequences else np.zeros(0, np.int64), minlength=vocab.size)[2:]
    popular = [vocab.ids[i] for i in np.argsort(-counts, kind="stable")[:POPULAR_KEPT]]
    return {
        name: SASRecPyfunc.from_parts(
            CooccurrenceScorer(CooccurrenceRecommender(vocab.size, sequences, window=FLOOR_WINDOWS[name]), max_len),
            list(vocab.ids),
            popular,
        )
        for name in names
    }


def floor_model(
    name: str, dataset: Dataset, split: TimeSplit, run_params: dict[str, str], workdir, client=None, run_id: str = ""
) -> dict:
    """``floor_pyfuncs``' ``name`` as the arguments of ``mlflow.pyfunc.log_model``: packaged and served
    like SASRec."""
    from pipeline.families.next_item.pyfunc import pyfunc_model_args

    floor = floor_pyfuncs([name], dataset.events(), split, int(run_params.get("model.max_len", HISTORY_LEN)))[name]
    example = pd.DataFrame({"history": [floor.popular[:3], []], "k": [10, 10]})
    return pyfunc_model_args(floor.model, floor.item_ids, floor.popular, None, workdir, example)
