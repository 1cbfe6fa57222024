"""The session-based benchmark format of SR-GNN and GCE-GNN, read safely, and Diginetica's published
preprocessing to build it from the raw ``train-item-views.csv``.

A folder in that format holds Python pickles:

* ``all_train_seq.txt``: the training sessions, a list of lists of integer item ids (from 1), in
  time order;
* ``test.txt``: a tuple ``(prefixes, labels)``: every prefix of every test session, and the item
  that followed it.

Pickles can run code when loaded, so ``read_sessions`` uses an unpickler that accepts nothing but
lists, tuples and integers: a file that holds anything else is refused with its name, not run.

``preprocess_diginetica`` follows ``datasets/preprocess.py`` of SR-GNN (Wu et al., 2019), the split
every later paper on Diginetica reuses: clicks ordered by ``timeframe`` within a session, a session
dated by its last ``eventdate``; sessions of one click dropped, then items seen fewer than 5 times,
then sessions left with fewer than 2 clicks; the sessions of the last 7 days are the test sessions;
item ids renumbered from 1 in order of first appearance in the training sessions; test clicks on
items never seen in training dropped, and test sessions left with fewer than 2 clicks.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

TRAIN_FILE, TEST_FILE = "all_train_seq.txt", "test.txt"


class SessionFormatError(ValueError):
    """A session folder whose files are missing or not in the SR-GNN format."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Lists, tuples and ints need no class lookup; anything that does is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only lists, tuples and integers")


def _load(path: Path):
    if not path.is_file():
        raise SessionFormatError(f"{path}: missing (a session folder holds {TRAIN_FILE} and {TEST_FILE})")
    try:
        return _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise SessionFormatError(f"{path}: not a pickle of lists of integer item ids ({exc})") from None


def _sequence(value, path: Path, where: str) -> np.ndarray:
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise SessionFormatError(
            f"{path}: {where} is {type(value).__name__} {str(value)[:60]}, not a list of integer item ids"
        )
    seq = np.asarray(value, dtype=np.int64)
    if seq.size and seq.min() < 1:
        raise SessionFormatError(f"{path}: {where} holds item id {int(seq.min())}; ids start at 1")
    return seq


@dataclass
class Sessions:
    """Training sessions and test (prefix, next item) pairs, item ids from 1."""

    train: list[np.ndarray]
    test_prefixes: list[np.ndarray]
    test_labels: np.ndarray

    @property
    def n_items(self) -> int:
        """Largest item id + 1 (id 0 is free for padding)."""
        top = max((int(s.max()) for s in self.train if s.size), default=0)
        return (
            max(
                top,
                int(self.test_labels.max(initial=0)),
                max((int(p.max()) for p in self.test_prefixes if p.size), default=0),
            )
            + 1
        )


def read_sessions(folder: Path) -> Sessions:
    """The SR-GNN files of ``folder``; ``SessionFormatError`` names the file and the first bad entry."""
    folder = Path(folder)
    train_path, test_path = folder / TRAIN_FILE, folder / TEST_FILE
    train = _load(train_path)
    if not isinstance(train, list) or not train:
        raise SessionFormatError(f"{train_path}: expected a non-empty list of sessions, got {type(train).__name__}")
    train_seqs = [_sequence(s, train_path, f"session {n}") for n, s in enumerate(train)]
    test = _load(test_path)
    if not (
        isinstance(test, (tuple, list))
        and len(test) == 2
        and isinstance(test[0], list)
        and isinstance(test[1], list)
        and len(test[0]) == len(test[1])
        and test[0]
    ):
        raise SessionFormatError(
            f"{test_path}: expected a tuple (prefixes, labels) of two lists of the same, non-zero length"
        )
    prefixes = [_sequence(p, test_path, f"prefix {n}") for n, p in enumerate(test[0])]
    labels = _sequence(test[1], test_path, "the labels")
    empty = next((n for n, p in enumerate(prefixes) if p.size == 0), None)
    if empty is not None:
        raise SessionFormatError(f"{test_path}: prefix {empty} is empty; every test example needs a history")
    return Sessions(train_seqs, prefixes, labels)


def _examples(sessions: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Every prefix of every session with the item that followed it (SR-GNN's ``process_seqs``)."""
    prefixes, labels = [], []
    for seq in sessions:
        for i in range(1, len(seq)):
            prefixes.append(seq[:-i])
            labels.append(seq[-i])
    return prefixes, labels


def preprocess_diginetica(csv: Path, out: Path, min_item_count: int = 5, test_days: int = 7) -> dict[str, int]:
    """Write ``all_train_seq.txt``, ``train.txt`` and ``test.txt`` for a raw Diginetica
    ``train-item-views.csv`` (``session_id;user_id;item_id;timeframe;eventdate``); returns counts."""
    raw = pl.read_csv(
        csv,
        separator=";",
        schema_overrides={"session_id": pl.Int64, "item_id": pl.Int64, "timeframe": pl.Int64, "eventdate": pl.String},
    )
    missing = {"session_id", "item_id", "timeframe", "eventdate"} - set(raw.columns)
    if missing:
        raise SessionFormatError(f"{csv}: no column(s) {', '.join(sorted(missing))}")
    raw = raw.with_row_index("_row").with_columns(pl.col("eventdate").str.to_date("%Y-%m-%d", strict=False))
    bad = raw.filter(pl.col("eventdate").is_null() | pl.col("item_id").is_null() | pl.col("timeframe").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise SessionFormatError(f"{csv}: row {row['_row'] + 2} has no usable item_id, timeframe or eventdate")
    # A session's date is its last row's eventdate in file order (SR-GNN reads it so).
    dates = raw.group_by("session_id").agg(pl.col("eventdate").sort_by("_row").last().alias("date"))
    clicks = raw.sort("session_id", "timeframe", "_row", maintain_order=True)
    sessions = clicks.group_by("session_id", maintain_order=True).agg(pl.col("item_id"))
    sessions = sessions.filter(pl.col("item_id").list.len() > 1)
    counts = sessions.explode("item_id").group_by("item_id").len()
    frequent = set(counts.filter(pl.col("len") >= min_item_count)["item_id"].to_list())
    sessions = sessions.with_columns(
        pl.col("item_id").list.eval(pl.element().filter(pl.element().is_in(list(frequent))))
    )
    sessions = sessions.filter(pl.col("item_id").list.len() >= 2).join(dates, on="session_id")
    split = sessions["date"].max() - timedelta(days=test_days)
    # Sessions in date order; a stable sort keeps the file's order within a day, as SR-GNN's does.
    train_part = sessions.filter(pl.col("date") < split).sort("date", maintain_order=True)
    test_part = sessions.filter(pl.col("date") > split).sort("date", maintain_order=True)
    ids: dict[int, int] = {}
    train = []
    for seq in train_part["item_id"].to_list():
        train.append([ids.setdefault(i, len(ids) + 1) for i in seq])
    test = [kept for seq in test_part["item_id"].to_list() if len(kept := [ids[i] for i in seq if i in ids]) >= 2]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_FILE).write_bytes(pickle.dumps(train))
    (out / "train.txt").write_bytes(pickle.dumps(_examples(train)))
    (out / TEST_FILE).write_bytes(pickle.dumps(tuple(_examples(test))))
    return {
        "train_sessions": len(train),
        "test_sessions": len(test),
        "items": len(ids),
        "test_examples": sum(len(s) - 1 for s in test),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Diginetica's SR-GNN preprocessing: raw csv -> session folder")
    parser.add_argument("csv", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(preprocess_diginetica(args.csv, args.out))
