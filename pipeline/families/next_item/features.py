"""The next-item family's features: item vocabulary, user sequences, training windows, examples.

Items are indexed from 2: index 0 pads a short history and index 1 stands for any item not seen in
training (a new item), so unknown ids are a value, not a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.params import TrainRecommenderParams
from pipeline.data.dataset import SEQUENCE_EVENT_TYPES, Dataset, TimeSplit, split_by_time
from pipeline.families.featureset import read_manifest

PAD, UNKNOWN = 0, 1


@dataclass(frozen=True)
class ItemVocab:
    """Item id <-> index; ids unseen in training map to UNKNOWN."""

    ids: tuple[str, ...]

    @classmethod
    def from_events(cls, events: pl.DataFrame) -> ItemVocab:
        # Item-less events (a signup, a chargeback) name no item.
        return cls(tuple(events["item_id"].drop_nulls().unique().sort().to_list()))

    @property
    def size(self) -> int:
        """Number of indices, the two reserved ones included."""
        return len(self.ids) + 2

    def encode(self, item_ids: pl.Series) -> np.ndarray:
        mapping = pl.DataFrame({"item_id": list(self.ids), "idx": np.arange(2, self.size, dtype=np.int64)})
        frame = pl.DataFrame({"item_id": item_ids.cast(pl.String)}).join(
            mapping, on="item_id", how="left", maintain_order="left"
        )
        return frame["idx"].fill_null(UNKNOWN).to_numpy()

    def decode(self, indices: np.ndarray) -> list[str | None]:
        return [self.ids[i - 2] if i >= 2 else None for i in np.asarray(indices).tolist()]


@dataclass
class NextItemExamples:
    """Histories (left-padded to ``max_len``) and the item that came next, for evaluation."""

    users: list[str]
    histories: np.ndarray  # [n, max_len] int64
    targets: np.ndarray  # [n] int64


def collapse_repeats(steps: pl.DataFrame) -> pl.DataFrame:
    """Drop each step whose item repeats the same user's previous step: a view followed by an
    add_to_cart of the same item is one step, not two. ``steps`` is sorted by user and time.

    The one definition for training (``user_sequences``) and serving (the snapshot's histories).
    It compares raw item ids, never vocabulary indices, so two different unseen items in a row stay
    two "unknown" steps in both.
    """
    previous_item, previous_user = pl.col("item_id").shift(1), pl.col("user_id").shift(1)
    return steps.filter(
        (pl.col("item_id") != previous_item) | (pl.col("user_id") != previous_user) | previous_item.is_null()
    )


def user_steps(events: pl.DataFrame) -> pl.DataFrame:
    """Each user's steps (views, carts, purchases) in time order, repeats in a row collapsed: the one
    ordering of training, serving and monitoring. Events at the same instant (items bought together
    at checkout) are ordered by item id: a sort on time alone leaves their order to the sort's
    threads, and the snapshot's history of such a user then differed from the training sequence."""
    return collapse_repeats(
        events.filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
        .select("user_id", "event_time", "item_id")
        .sort("user_id", "event_time", "item_id")
    )


def user_sequences(events: pl.DataFrame, vocab: ItemVocab, before: datetime) -> dict[str, np.ndarray]:
    """Each user's item indices before ``before``, in time order, repeats in a row collapsed."""
    frame = user_steps(events.filter(pl.col("event_time") < before))
    frame = frame.with_columns(pl.Series("idx", vocab.encode(frame["item_id"])))
    grouped = frame.group_by("user_id", maintain_order=True).agg(pl.col("idx"))
    return {u: np.asarray(s, dtype=np.int64) for u, s in zip(grouped["user_id"], grouped["idx"], strict=True)}


def user_histories(events: pl.DataFrame, kept: int) -> pl.DataFrame:
    """Per user: the ``kept`` most recent item ids (oldest first, repeats in a row collapsed, as in
    training) and every item bought: what the serving snapshot holds per user."""
    steps = user_steps(events)
    histories = steps.group_by("user_id", maintain_order=True).agg(pl.col("item_id").tail(kept).alias("items"))
    bought = (
        events.filter(pl.col("event_type") == "purchase")
        .group_by("user_id")
        .agg(pl.col("item_id").unique().sort().alias("purchased"))
    )
    return (
        histories.join(bought, on="user_id", how="full", coalesce=True)
        .with_columns(pl.col("items").fill_null([]), pl.col("purchased").fill_null([]))
        .sort("user_id")
    )


def left_pad(seq: np.ndarray, max_len: int) -> np.ndarray:
    out = np.zeros(max_len, dtype=np.int64)
    tail = seq[-max_len:]
    if tail.size:
        out[-tail.size :] = tail
    return out


def next_item_examples(
    events: pl.DataFrame,
    vocab: ItemVocab,
    histories: dict[str, np.ndarray],
    history_end: datetime,
    window_end: datetime,
    max_len: int,
) -> tuple[NextItemExamples, int]:
    """For each user active in [history_end, window_end): their history, and their first new item.

    ``histories`` is ``user_sequences(events, vocab, history_end)``, which the caller also needs to
    train or to build baselines, so it is passed in rather than computed again.

    The target is the user's first item in the window that differs from the last item of their
    history. Targets that are new items (unknown to the model) cannot be ranked by any model and
    are left out; their count is returned beside the examples.
    """
    window = events.filter(
        (pl.col("event_time") >= history_end)
        & (pl.col("event_time") < window_end)
        & pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES)
    ).sort("event_time", "item_id")  # ties (a checkout) in one order, as in user_steps
    window = window.with_columns(pl.Series("idx", vocab.encode(window["item_id"])))
    users, hist, targets, unknown = [], [], [], 0
    for user, items in window.group_by("user_id", maintain_order=True).agg(pl.col("idx")).iter_rows():
        past = histories.get(user, np.zeros(0, dtype=np.int64))
        last = past[-1] if past.size else -1
        target = next((i for i in items if i != last), None)
        if target is None:
            continue
        if target == UNKNOWN:
            unknown += 1
            continue
        users.append(user)
        hist.append(left_pad(past, max_len))
        targets.append(target)
    examples = NextItemExamples(
        users=users,
        histories=np.stack(hist) if hist else np.zeros((0, max_len), dtype=np.int64),
        targets=np.asarray(targets, dtype=np.int64),
    )
    return examples, unknown


def training_windows(sequences: dict[str, np.ndarray], max_len: int) -> np.ndarray:
    """Training rows for a sequential model: each sequence cut into windows of ``max_len + 1``.

    Row ``r`` holds inputs ``r[:-1]`` and next-item labels ``r[1:]`` (0 where there is none).
    Long sequences give several non-overlapping windows, so no interaction is wasted.
    """
    rows = []
    for seq in sequences.values():
        if seq.size < 2:
            continue
        for end in range(seq.size, 1, -max_len):
            rows.append(left_pad(seq[max(0, end - max_len - 1) : end], max_len + 1))
    return np.stack(rows) if rows else np.zeros((0, max_len + 1), dtype=np.int64)


@dataclass
class RecommenderFeatures:
    """SASRec's inputs and what the baselines are built from."""

    split: TimeSplit
    vocab: ItemVocab
    windows: np.ndarray  # [n, max_len + 1] training windows
    valid: NextItemExamples
    test: NextItemExamples
    train_items: np.ndarray  # every training-period interaction (popularity, cold start)
    recent_items: np.ndarray  # the last ``recent_days`` of training (recent popularity)
    test_sequences: list[np.ndarray]  # each user's history up to the test period (co-occurrence)
    counts: dict[str, int]
    train_sequences: list[np.ndarray] | None = None  # each user's history up to train_end (co-occurrence
    # with SASRec's own information, for validation)


def write_features(out: Path, dataset: Dataset, params: TrainRecommenderParams):
    """The family's feature files: ``vocab.json`` (item ids, index 2 onwards) and ``arrays.npz``
    (training windows, the validation and test histories and targets, the interactions the baselines
    count)."""
    events = dataset.events()
    split = split_by_time(events, params.valid_days, params.test_days)
    vocab = ItemVocab.from_events(events.filter(pl.col("event_time") < split.train_end))
    sequences = user_sequences(events, vocab, split.train_end)
    # The test history includes validation-period interactions, as it will when serving.
    test_sequences = user_sequences(events, vocab, split.valid_end)
    windows = training_windows(sequences, params.max_len)
    valid, valid_unknown = next_item_examples(
        events, vocab, sequences, split.train_end, split.valid_end, params.max_len
    )
    test, test_unknown = next_item_examples(events, vocab, test_sequences, split.valid_end, split.end, params.max_len)
    if windows.shape[0] == 0 or len(valid.targets) == 0:
        raise BadInput("no training sequences or no validation examples in the split")
    recent = events.filter(
        (pl.col("event_time") >= split.train_end - timedelta(days=params.recent_days))
        & (pl.col("event_time") < split.train_end)
    )
    test_seqs, train_seqs = list(test_sequences.values()), list(sequences.values())
    (out / "vocab.json").write_text(json.dumps(list(vocab.ids)))
    np.savez(
        out / "arrays.npz",
        windows=windows,
        valid_histories=valid.histories,
        valid_targets=valid.targets,
        valid_users=np.asarray(valid.users, dtype=str),
        test_histories=test.histories,
        test_targets=test.targets,
        test_users=np.asarray(test.users, dtype=str),
        train_items=np.concatenate(list(sequences.values())),
        recent_items=vocab.encode(recent["item_id"]),
        test_sequences=np.concatenate(test_seqs) if test_seqs else np.zeros(0, dtype=np.int64),
        test_sequence_ends=np.cumsum([len(s) for s in test_seqs], dtype=np.int64),
        train_sequences=np.concatenate(train_seqs),
        train_sequence_ends=np.cumsum([len(s) for s in train_seqs]),
    )
    counts = {
        "train_windows": int(windows.shape[0]),
        "valid_examples": len(valid.targets),
        "test_examples": len(test.targets),
        "items": vocab.size - 2,
        "valid_unknown_targets": valid_unknown,
        "test_unknown_targets": test_unknown,
    }
    return counts, split


def load_features(folder: Path) -> RecommenderFeatures:
    manifest = read_manifest(folder, "next_item")
    vocab = ItemVocab(tuple(json.loads((Path(folder) / "vocab.json").read_text())))
    with np.load(Path(folder) / "arrays.npz") as a:
        arrays = {k: a[k] for k in a.files}

    def split_at(name: str) -> list[np.ndarray]:
        ends = arrays[name.removesuffix("s") + "_ends"]
        return np.split(arrays[name], ends[:-1]) if ends.size else []

    return RecommenderFeatures(
        split=TimeSplit.from_dict(manifest["split"]),
        vocab=vocab,
        windows=arrays["windows"],
        valid=NextItemExamples(arrays["valid_users"].tolist(), arrays["valid_histories"], arrays["valid_targets"]),
        test=NextItemExamples(arrays["test_users"].tolist(), arrays["test_histories"], arrays["test_targets"]),
        train_items=arrays["train_items"],
        recent_items=arrays["recent_items"],
        test_sequences=split_at("test_sequences"),
        counts=manifest["counts"],
        train_sequences=split_at("train_sequences"),
    )
