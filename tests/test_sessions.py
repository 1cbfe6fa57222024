"""The session-based benchmark format (SR-GNN's pickles): Diginetica's published preprocessing on the
real raw sample, a reader that refuses what is not plain data, and ``bench_models --sessions``."""

from __future__ import annotations

import json
import pickle
import sys
from datetime import datetime

import numpy as np
import pytest

from benchmarks.data import sample
from benchmarks.sessions import SessionFormatError, preprocess_diginetica, read_sessions
from conftest import need_sample

DIGINETICA = sample("raw_samples", "diginetica_sample", "sample_train-item-views.csv")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("diginetica")
    counts = preprocess_diginetica(need_sample(DIGINETICA), out)
    return out, counts


def test_diginetica_preprocessing_matches_the_published_rules(fixture_dir):
    import polars as pl

    out, counts = fixture_dir
    data = read_sessions(out)
    assert len(data.train) == counts["train_sessions"] > 0 and counts["test_sessions"] > 0
    assert len(data.test_labels) == counts["test_examples"] == len(data.test_prefixes)
    train_items = np.concatenate(data.train)
    # Ids renumbered 1..n in order of first appearance in the training sessions.
    first_seen = list(dict.fromkeys(train_items.tolist()))
    assert first_seen == list(range(1, counts["items"] + 1))
    assert all(s.size >= 2 for s in data.train)
    # Test items are training items; each test example is a prefix and the item after it.
    assert set(data.test_labels.tolist()) <= set(first_seen)
    assert all(set(p.tolist()) <= set(first_seen) for p in data.test_prefixes)
    assert len(data.test_prefixes[0]) >= 1
    # Rare items are gone: every kept item was clicked at least 5 times in sessions of 2+ clicks.
    raw = pl.read_csv(need_sample(DIGINETICA), separator=";")
    multi = raw.filter(pl.len().over("session_id") > 1)
    kept_raw = multi.group_by("item_id").len().filter(pl.col("len") >= 5).height
    assert counts["items"] <= kept_raw
    # The training file is SR-GNN's augmentation of the training sessions.
    prefixes, labels = pickle.loads((out / "train.txt").read_bytes())
    assert len(labels) == sum(s.size - 1 for s in data.train)
    assert prefixes[0] + [labels[0]] == data.train[0].tolist()


def test_reader_refuses_what_is_not_plain_data(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "all_train_seq.txt").write_bytes(pickle.dumps([[1, 2], [3, 4]]))
    with pytest.raises(SessionFormatError, match=r"test.txt: missing"):
        read_sessions(folder)
    # A pickle that needs a class is not loaded (a pickle can run code while loading).
    (folder / "test.txt").write_bytes(pickle.dumps(([[1]], [datetime(2020, 1, 1)])))
    with pytest.raises(SessionFormatError, match=r"test.txt: not a pickle .*refusing to load datetime"):
        read_sessions(folder)
    (folder / "test.txt").write_bytes(pickle.dumps(([[1], [2]], [2])))
    with pytest.raises(SessionFormatError, match=r"tuple \(prefixes, labels\)"):
        read_sessions(folder)
    (folder / "test.txt").write_bytes(pickle.dumps(([[1], [2]], [2, 3])))
    (folder / "all_train_seq.txt").write_bytes(pickle.dumps([[1, 2], [3, "x"]]))
    with pytest.raises(SessionFormatError, match=r"all_train_seq.txt: session 1 is list"):
        read_sessions(folder)
    (folder / "all_train_seq.txt").write_bytes(pickle.dumps([[1, 2], [0, 4]]))
    with pytest.raises(SessionFormatError, match=r"session 1 holds item id 0; ids start at 1"):
        read_sessions(folder)
    (folder / "all_train_seq.txt").write_bytes(b"not a pickle")
    with pytest.raises(SessionFormatError, match=r"all_train_seq.txt: not a pickle"):
        read_sessions(folder)


def test_bench_models_reads_sessions_and_reports_p_and_mrr_at_20(fixture_dir, tmp_path, monkeypatch, capsys):
    from benchmarks import bench_models

    out, _ = fixture_dir
    result = tmp_path / "figures.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_models",
            "--sessions",
            str(out),
            "--seeds",
            "1",
            "--epochs",
            "3",
            "--patience",
            "2",
            "--max-len",
            "20",
            "--json",
            str(result),
        ],
    )
    assert bench_models.main() == 0
    figures = json.loads(result.read_text())
    assert set(figures) == {"popularity", "cooccurrence", "sasrec", "sasrec_cooc_blend"}
    for name, values in figures.items():
        assert set(values) == {"p_at_20", "mrr_at_20"}, name
        assert 0.0 <= values["mrr_at_20"] <= values["p_at_20"] <= 1.0, (name, values)
    # On real sessions, what followed an item before beats what is popular.
    assert figures["cooccurrence"]["p_at_20"] > figures["popularity"]["p_at_20"] + 0.2
    printed = capsys.readouterr().out
    assert "SR-GNN (Wu et al., AAAI 2019): p_at_20 0.5073, mrr_at_20 0.1759" in printed
    assert "time to converge" in printed
