"""The in-service batching and the recommender's split into user states and ranking (no servers)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.serving.batching import MicroBatcher, Overloaded

pytestmark = pytest.mark.fast


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_model_calls_and_get_their_own_answers():
    calls: list[list[int]] = []

    def double(requests):
        calls.append(list(requests))
        time.sleep(0.01)  # the model is busy: the next requests queue meanwhile
        return [2 * r for r in requests]

    batcher = MicroBatcher(double, max_batch=8)

    async def main():
        return await asyncio.gather(*(batcher(i) for i in range(40)))

    assert _run(main()) == [2 * i for i in range(40)]
    assert sorted(r for call in calls for r in call) == list(range(40))
    assert max(len(c) for c in calls) == 8 and len(calls) < 40
    assert batcher.stats.rows == 40 and batcher.stats.largest == 8 and batcher.stats.batches == len(calls)


@pytest.mark.parametrize("inline", [False, True])
def test_after_runs_once_answers_are_out_and_before_the_next_batch(inline):
    """What a batch leaves behind (the fraud service remembers the orders it scored) is there for
    the next batch, yet its own answers do not wait for it: on the batch thread or inline."""
    remembered: list[int] = []
    seen_by_batch: list[list[int]] = []
    answered_at: list[float] = []
    remembered_at: list[float] = []

    def fn(requests):
        seen_by_batch.append(list(remembered))
        return [r * 10 for r in requests]

    def after(requests, results):
        time.sleep(0.02)
        remembered.extend(requests)
        remembered_at.append(time.perf_counter())

    batcher = MicroBatcher(fn, max_batch=1, after=after, inline=inline)

    async def call(i):
        answer = await batcher(i)
        answered_at.append(time.perf_counter())
        return answer

    async def main():
        return [await call(i) for i in range(5)]

    assert _run(main()) == [0, 10, 20, 30, 40]
    # Each batch saw every earlier request remembered, though its caller had its answer before.
    assert seen_by_batch == [[], [0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert all(a < r for a, r in zip(answered_at, remembered_at, strict=False)) and batcher.stats.after_failed == 0


def test_a_failing_after_is_counted_and_does_not_stop_batching():
    def after(requests, results):
        raise RuntimeError("store unavailable")

    batcher = MicroBatcher(lambda rs: rs, max_batch=1, after=after, inline=True)

    async def main():
        return [await batcher(i) for i in range(3)]

    assert _run(main()) == [0, 1, 2] and batcher.stats.after_failed == 3


def test_batches_count_rows_and_never_split_a_request():
    sizes: list[int] = []

    def total(requests):
        sizes.append(sum(len(r) for r in requests))
        time.sleep(0.005)
        return [sum(r) for r in requests]

    batcher = MicroBatcher(total, max_batch=100, size=len)

    async def main():
        return await asyncio.gather(*(batcher([1] * n) for n in (60, 60, 30, 150, 10)))

    assert _run(main()) == [60, 60, 30, 150, 10]
    assert 150 in sizes  # larger than a batch: alone
    assert all(s <= 100 for s in sizes if s != 150)


def test_a_failing_batch_fails_its_requests_only():
    def fn(requests):
        if "bad" in requests:
            raise ValueError("model exploded")
        return requests

    batcher = MicroBatcher(fn, max_batch=1)

    async def main():
        return await asyncio.gather(batcher("ok"), batcher("bad"), batcher("fine"), return_exceptions=True)

    ok, bad, fine = _run(main())
    assert ok == "ok" and fine == "fine" and isinstance(bad, ValueError)


def test_requests_waiting_past_the_deadline_are_refused_not_queued_forever():
    release = threading.Event()

    def slow(requests):
        release.wait(1)
        return requests

    batcher = MicroBatcher(slow, max_batch=1, max_latency_ms=50)

    async def main():
        tasks = [asyncio.ensure_future(batcher(i)) for i in range(4)]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = _run(main())
    assert results[0] == 0  # the first ran at once
    assert all(isinstance(r, Overloaded) and "deadline" in str(r) for r in results[1:])
    assert batcher.stats.overloaded == 3


def test_wait_ms_lets_a_lone_request_be_joined():
    calls: list[int] = []
    batcher = MicroBatcher(lambda rs: calls.append(len(rs)) or rs, max_batch=16, wait_ms=100)

    async def main():
        first = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0.02)
        return await asyncio.gather(first, batcher(2))

    assert _run(main()) == [1, 2] and calls == [2]


@pytest.mark.parametrize("settle", [0, 8])
def test_settle_lets_requests_already_on_their_way_join_the_batch(settle):
    """Requests the event loop has read but not yet brought to their model call (a few awaits
    away, as in the HTTP stack) join the batch when it settles first."""
    calls: list[int] = []
    batcher = MicroBatcher(lambda rs: calls.append(len(rs)) or rs, max_batch=64, settle=settle)

    async def request(i: int, hops: int):
        for _ in range(hops):
            await asyncio.sleep(0)
        return await batcher(i)

    async def main():
        return await asyncio.gather(*(request(i, i % 3) for i in range(12)))

    assert _run(main()) == list(range(12))
    assert calls == ([12] if settle else [4, 8])


@pytest.fixture(scope="module")
def recommender():
    """A small blended recommender pyfunc (random weights) over 300 items."""
    from models.baselines import CooccurrenceRecommender
    from models.blend import BlendedRecommender
    from models.sasrec import SASRec, SASRecConfig
    from pipeline.families.next_item.pyfunc import SASRecPyfunc

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    items = [f"i{i}" for i in range(300)]
    sasrec = SASRec(SASRecConfig(n_items=302, max_len=20, dim=16, heads=2, layers=1)).eval()
    sequences = [rng.integers(2, 302, rng.integers(2, 30)) for _ in range(200)]
    model = BlendedRecommender(sasrec, CooccurrenceRecommender(302, sequences), beta=2.0)
    histories = [[items[int(i)] for i in rng.integers(0, 300, rng.integers(1, 40))] for _ in range(50)]
    return SASRecPyfunc.from_parts(model, items, items[:30]), histories


def test_packaged_user_states_rank_like_predict(recommender, tmp_path):
    """What the service serves a known user from its packaged state is what predict answers for the
    user's history (the evaluated call); cold histories get popularity either way."""
    from pipeline.families.next_item.serving import NextItemRanker, Row
    from pipeline.families.next_item.states import UserStateTable, write_user_states

    pyfunc, histories = recommender
    histories = [*histories, ["no-such-item"], []]
    users = [f"u{i}" for i in range(len(histories))]
    meta = write_user_states(pyfunc, users, histories, tmp_path / "states", batch=7)
    assert meta["users"] == len(users) and meta["dim"] == 16 and meta["tail_len"] == 3
    table = UserStateTable(tmp_path / "states")
    ranker = NextItemRanker(pyfunc, None, table)
    expected = pyfunc.predict(None, pd.DataFrame({"history": histories, "k": 10}))
    from_states = ranker.rank_rows([Row(table.row(u), None, 10, []) for u in users])
    from_histories = ranker.rank_rows([Row(None, h, 10, []) for h in histories])
    for row, (a, b) in enumerate(zip(from_states, from_histories, strict=True)):
        assert a[0] == b[0] == expected["items"][row]
        np.testing.assert_allclose(a[1], expected["scores"][row], atol=1e-5)
        assert a[2] == expected["source"][row]
    assert from_states[-1][2] == from_states[-2][2] == "popularity"
    assert table.row("someone-else") is None


def test_exclusions_are_the_top_k_of_what_is_left(recommender):
    """Masking excluded items before the top-k answers the unfiltered ranking minus those items."""
    from pipeline.families.next_item.serving import NextItemRanker, Row

    pyfunc, histories = recommender
    ranker = NextItemRanker(pyfunc, None, None)
    for history in histories[:10]:
        [(full, _, _)] = ranker.rank_rows([Row(None, history, 40, [])])
        banned = full[:5] + full[10:12] + ["not-an-item"]
        [(kept, scores, _)] = ranker.rank_rows([Row(None, history, 10, banned)])
        assert kept == [i for i in full if i not in banned][:10]
        assert scores == sorted(scores, reverse=True)
    # A cold start leaves them out of the popularity answer too.
    [(cold, _, source)] = ranker.rank_rows([Row(None, [], 5, ["i0", "i2"])])
    assert source == "popularity" and cold == ["i1", "i3", "i4", "i5", "i6"]


def test_the_blend_scores_like_its_dense_definition():
    """``sasrec + beta * log(1 + cooccurrence)``: the sparse computation serving uses equals the
    dense formula, repeated items, padding and unknown items in the histories included."""
    from models.baselines import CooccurrenceRecommender
    from models.blend import BlendedRecommender
    from models.sasrec import SASRec, SASRecConfig

    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    sasrec = SASRec(SASRecConfig(n_items=502, max_len=12, dim=16, heads=2, layers=1)).eval()
    cooccurrence = CooccurrenceRecommender(502, [rng.integers(2, 502, rng.integers(2, 40)) for _ in range(300)])
    blend = BlendedRecommender(sasrec, cooccurrence, beta=3.0)
    seq = torch.from_numpy(rng.integers(2, 502, (64, 12)))
    seq[:5, :8] = 0  # short histories
    seq[5, -2:] = seq[5, -3]  # an item repeated among the recent ones
    seq[6, -1] = 1  # an unknown item
    seq[7] = 0  # nothing at all
    with torch.no_grad():
        dense = sasrec(seq) + 3.0 * torch.log1p(cooccurrence.score(seq).clamp(min=0))
        sparse = blend(seq)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    assert torch.equal(sparse.topk(20, dim=1).indices, dense.topk(20, dim=1).indices)
