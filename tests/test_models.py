"""Model tests: learning (loss falls, beats popularity), resumable training, unknown ids.

The data is the synthetic shop, whose users have sequential and personal structure; the tests
assert comparisons, never exact metric values.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.metrics import target_ranks
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train
from pipeline.core.params import GenerateParams
from pipeline.data.dataset import split_by_time
from pipeline.data.generate import generate_shop_data
from pipeline.families.next_item.features import (
    UNKNOWN,
    ItemVocab,
    next_item_examples,
    training_windows,
    user_sequences,
)
from pipeline.families.next_item.train import evaluate_scorer

MAX_LEN = 20


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    days = generate_shop_data(
        GenerateParams(
            seed=11, start_date="2026-10-01", days=14, events_per_day=5000, initial_users=2000, initial_items=1200
        ),
        out,
    )
    events = pl.concat([pl.read_csv(d.events_path, try_parse_dates=True) for d in days])
    catalog = pl.read_csv(days[-1].catalog_path, schema_overrides={"item_id": pl.String})
    split = split_by_time(events, valid_days=2, test_days=2)
    vocab = ItemVocab.from_events(events.filter(pl.col("event_time") < split.train_end))
    sequences = user_sequences(events, vocab, split.train_end)
    valid, _ = next_item_examples(events, vocab, sequences, split.train_end, split.valid_end, MAX_LEN)
    test, unknown = next_item_examples(
        events, vocab, user_sequences(events, vocab, split.valid_end), split.valid_end, split.end, MAX_LEN
    )
    windows = torch.from_numpy(training_windows(sequences, MAX_LEN))
    return {
        "events": events,
        "catalog": catalog,
        "split": split,
        "vocab": vocab,
        "sequences": sequences,
        "valid": valid,
        "test": test,
        "unknown_targets": unknown,
        "windows": windows,
    }


def _loss(model, batch):
    return model(batch[:, :-1], batch[:, 1:], n_negatives=128)


@pytest.mark.fast
def test_split_is_by_time_and_recorded(shop):
    split = shop["split"]
    assert split.start < split.train_end < split.valid_end < split.end
    assert (split.end - split.valid_end).days == 2 and (split.valid_end - split.train_end).days == 2
    assert shop["events"]["event_time"].max() < split.end


def test_sequential_model_learns_and_beats_popularity(shop):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=shop["vocab"].size, max_len=MAX_LEN, dim=48, dropout=0.3))
    result = train(
        model,
        shop["windows"],
        _loss,
        lambda m: evaluate_scorer(m, shop["valid"])["recall_at_20"],
        TrainConfig(epochs=6, batch_size=128, lr=2e-3, patience=2, seed=0, progress=False),
    )
    losses = [h["train_loss"] for h in result.history]
    assert losses[1] < losses[0]
    model.eval()
    sasrec = evaluate_scorer(model, shop["test"])
    sequences = list(shop["sequences"].values())
    popular = PopularityRecommender(shop["vocab"].size, np.concatenate(sequences))
    popularity = evaluate_scorer(popular.score, shop["test"])
    assert sasrec["recall_at_20"] > popularity["recall_at_20"]
    assert sasrec["ndcg_at_20"] > popularity["ndcg_at_20"]


@pytest.mark.fast
def test_cooccurrence_baseline_beats_popularity(shop):
    sequences = list(shop["sequences"].values())
    cooc = evaluate_scorer(CooccurrenceRecommender(shop["vocab"].size, sequences).score, shop["test"])
    popular = PopularityRecommender(shop["vocab"].size, np.concatenate(sequences))
    popularity = evaluate_scorer(popular.score, shop["test"])
    assert cooc["recall_at_20"] > popularity["recall_at_20"]


def test_resumed_training_ends_where_an_uninterrupted_run_ends(shop, tmp_path):
    windows = shop["windows"][:600]
    config = TrainConfig(epochs=3, batch_size=64, lr=2e-3, patience=10, seed=3, progress=False)
    args = SASRecConfig(n_items=shop["vocab"].size, max_len=MAX_LEN, dim=16, layers=1)

    def metric(m):  # deterministic, and different every epoch
        return -float(sum(p.abs().sum() for p in m.parameters()))

    torch.manual_seed(1)
    straight = SASRec(args)
    train(straight, windows, _loss, metric, config, checkpoint_dir=tmp_path / "a")

    torch.manual_seed(1)
    killed = SASRec(args)
    train(killed, windows, _loss, metric, config, checkpoint_dir=tmp_path / "b", stop_after_epochs=1)
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and set(ckpt) >= {"model", "optimizer", "config", "step", "best_metric", "model_args"}
    torch.manual_seed(99)  # a fresh process would start from another state: the checkpoint restores it
    resumed = SASRec(args)
    result = train(resumed, windows, _loss, metric, config, checkpoint_dir=tmp_path / "b")
    assert result.epochs_run == 3
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.fast
def test_unknown_items_are_a_value_not_a_crash(shop):
    vocab = shop["vocab"]
    encoded = vocab.encode(pl.Series(["never-seen", vocab.ids[0]]))
    assert encoded.tolist() == [UNKNOWN, 2]
    model = SASRec(SASRecConfig(n_items=vocab.size, max_len=MAX_LEN, dim=16, layers=1))
    history = torch.zeros(1, MAX_LEN, dtype=torch.long)
    history[0, -2:] = torch.tensor([UNKNOWN, 2])
    scores = model(history)
    assert scores.shape == (1, vocab.size) and torch.isfinite(scores).all()
    # Padding and the unknown item are never ranked above a real item.
    ranks = target_ranks(torch.zeros(1, vocab.size), torch.tensor([5]))
    assert ranks.item() == vocab.size - 3
    # Users whose next item is new to the model (the shop launches items every day) are counted, not
    # dropped silently, and none of them stays among the examples.
    assert shop["unknown_targets"] > 0 and len(shop["test"].targets) > 100
    assert (shop["test"].targets >= 2).all()


@pytest.mark.fast
def test_the_gate_scores_the_training_runs_test_rows_with_one_vocabulary(shop):
    from types import SimpleNamespace

    from pipeline.families.next_item.evaluation import test_set

    vocab, known = shop["vocab"], set(shop["vocab"].ids)
    dataset = SimpleNamespace(events=lambda: shop["events"], catalog=lambda as_of=None: shop["catalog"])
    test = test_set(dataset, shop["split"])
    # The rows of the training run's own test metrics: the same users and targets, in order.
    assert list(test.users) == shop["test"].users
    assert list(test.targets) == vocab.decode(shop["test"].targets)
    # One vocabulary for every side: no target, and nothing a baseline ranks, is outside the items of the
    # training period, so a baseline cannot score on items the model never saw.
    assert set(test.targets) <= known and set(test.item_popularity) <= known
    assert all(set(row) <= known for row in test.context["cooccurrence_top"])
    # Histories are sent as serving sends them: raw ids before the test period, items the model does not
    # know included (the pyfunc reads them as the unknown item).
    histories = test.inputs["history"].tolist()
    assert any(i not in known for h in histories for i in h)
    assert all(
        len(h) > 0
        for h, u in zip(histories, test.users, strict=True)
        if shop["sequences"].get(u) is not None and shop["sequences"][u].size
    )


@pytest.mark.fast
def test_split_needs_enough_days(shop):
    three_days = shop["events"].filter(pl.col("event_time") < shop["split"].start + timedelta(days=3))
    with pytest.raises(ValueError, match="spans 3 day"):
        split_by_time(three_days, valid_days=2, test_days=2)


def test_training_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    worker = [sys.executable, str(REPO / "tests" / "kill_worker.py")]
    subprocess.run([*worker, str(tmp_path / "a"), str(tmp_path / "straight.pt")], env=env, check=True, timeout=300)

    victim = subprocess.Popen([*worker, str(tmp_path / "b"), str(tmp_path / "resumed.pt")], env=env)
    deadline = time.monotonic() + 120
    while not (tmp_path / "b" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # into the next epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL and not (tmp_path / "resumed.pt").exists()
    killed_at = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"]
    assert killed_at < 3  # it really was interrupted before the end

    subprocess.run([*worker, str(tmp_path / "b"), str(tmp_path / "resumed.pt")], env=env, check=True, timeout=300)
    straight, resumed = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_a_run_resumed_after_its_early_stop_trains_no_further(shop, tmp_path):
    windows = shop["windows"][:300]
    args = SASRecConfig(n_items=shop["vocab"].size, max_len=MAX_LEN, dim=16, layers=1)
    config = TrainConfig(epochs=10, batch_size=64, patience=1, seed=3, progress=False)
    torch.manual_seed(1)
    first = train(SASRec(args), windows, _loss, lambda m: 0.0, config, checkpoint_dir=tmp_path)
    assert first.stopped_early and first.epochs_run == 2  # no improvement after epoch 1
    torch.manual_seed(1)
    again = train(SASRec(args), windows, _loss, lambda m: 0.0, config, checkpoint_dir=tmp_path)
    assert again.stopped_early and again.epochs_run == 2 and again.history == first.history
    assert again.resumed_from_epoch == 2


@pytest.mark.fast
def test_a_historys_scores_do_not_depend_on_its_left_padding():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=60, max_len=20, dim=16, layers=2, dropout=0.0)).eval()
    history = torch.tensor([5, 9, 13, 2, 40, 7, 7])
    padded = [torch.cat([torch.zeros(n, dtype=torch.long), history])[None] for n in (0, 3, 13)]
    with torch.no_grad():
        scores = [model(seq) for seq in padded]
    for other in scores[1:]:
        torch.testing.assert_close(other, scores[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # while the history itself matters: without its oldest item, other scores
        assert not torch.allclose(model(padded[0][:, 1:]), scores[0], atol=1e-3)


@pytest.mark.fast
def test_no_loss_on_a_target_whose_input_is_padding():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, max_len=5, dim=8, layers=1, dropout=0.0))
    inputs = torch.tensor([[0, 0, 4, 6, 8], [3, 5, 7, 9, 11]])
    labels = torch.tensor([[0, 4, 6, 8, 10], [5, 7, 9, 11, 13]])  # 4 follows padding: nothing predicts it
    without = labels.clone()
    without[0, 1] = 0
    torch.testing.assert_close(model(inputs, labels), model(inputs, without))
    # By hand: the mean cross-entropy over the eight targets whose input is an item.
    with torch.no_grad():
        h = model.hidden(inputs)
        logits = h @ model.item_emb.weight.t()
        logits[..., :2] = -torch.inf
        keep = (labels > 0) & (inputs > 0)
        expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert keep.sum() == 8
    torch.testing.assert_close(model(inputs, labels).detach(), expected)


@pytest.mark.fast
def test_the_sampled_softmax_draws_by_frequency_and_corrects_by_log_expected_count():
    torch.manual_seed(0)
    n = 40
    model = SASRec(SASRecConfig(n_items=n, max_len=4, dim=8, layers=1, dropout=0.0, loss="sampled"))
    counts = torch.zeros(n)
    counts[2:] = torch.arange(1, n - 1).float() ** 2  # skewed popularity
    counts[17] = 0  # never a target: never a negative
    model.set_item_counts(counts)
    inputs, labels = torch.tensor([[0, 3, 8, 21]]), torch.tensor([[3, 8, 21, 30]])
    k = 400_000
    with torch.no_grad():
        sampled = model(inputs, labels, n_negatives=k)
        h = model.hidden(inputs)[0, 1:]  # the three positions with an item as input
        s = h @ model.item_emb.weight.t()  # [3, n]
        q = counts / counts.sum()
        target = labels[0, 1:]
        # What the estimator converges to: the positive and every other item weighted by exp(s) / (K q) * K q.
        log_kq = torch.log(k * q[target])
        others = torch.logsumexp(
            torch.where((q > 0)[None] & (torch.arange(n)[None] != target[:, None]), s, torch.tensor(-torch.inf)), dim=1
        )
        pos = s.gather(1, target[:, None])[:, 0] - log_kq
        expected = (-pos + torch.logaddexp(pos, others)).mean()
    torch.testing.assert_close(sampled, expected, rtol=0.02, atol=0.02)
    assert torch.multinomial(model.log_q.exp(), 10_000, replacement=True).ne(17).all()


@pytest.mark.fast
def test_the_blend_weight_is_chosen_on_validation_and_zero_is_sasrec_alone(shop):
    from models.baselines import CooccurrenceRecommender
    from models.blend import BlendedRecommender, choose_beta

    torch.manual_seed(0)
    sasrec = SASRec(SASRecConfig(n_items=shop["vocab"].size, max_len=MAX_LEN, dim=16, layers=1)).eval()
    cooc = CooccurrenceRecommender(shop["vocab"].size, list(shop["sequences"].values()))
    histories = torch.from_numpy(shop["valid"].histories[:64])
    with torch.no_grad():
        torch.testing.assert_close(BlendedRecommender(sasrec, cooc, 0.0)(histories), sasrec(histories))
    beta, curve = choose_beta(sasrec, cooc, lambda m: evaluate_scorer(m, shop["valid"])["ndcg_at_10"])
    # An untrained SASRec scores at random: validation says to lean on co-occurrence.
    assert beta > 0 and curve[beta] == max(curve.values()) and curve[beta] > curve[0.0]
    state = CooccurrenceRecommender.from_state(cooc.to_state())
    torch.testing.assert_close(state.score(histories), cooc.score(histories))


class _Planted:
    """An object a planted checkpoint carries: unpickling it would run ``__reduce__``'s call."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


@pytest.mark.fast
def test_a_checkpoint_holding_code_is_not_loaded(tmp_path, capsys):
    from models.train import _load_checkpoint

    torch.save({"epoch": 3, "payload": _Planted()}, tmp_path / "last.pt")
    assert _load_checkpoint(tmp_path, 0, 1) is None
    assert "code ran" not in capsys.readouterr().out
