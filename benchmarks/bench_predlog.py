"""What prediction logging costs a request, and how much it writes, on this machine.

Four figures (``make bench-predlog``):

* the time ``PredictionLog.record`` takes on the request path (what a served answer pays), p50,
  p99 and max over ``--answers`` calls from ``--threads`` threads in a tight loop at once, while
  the writer thread writes them (the worst case: every thread contends for the GIL);
* the same at a steady ``--rate`` from one thread (a service's event loop);
* the writer's throughput: answers per second from the first record to the last file written;
* with a queue smaller than a burst and a sink that cannot keep up, the answers dropped and
  counted (the request still pays only ``record``).

Each answer is a next-item answer of 10 items and scores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

from pipeline.data.predictions import read_predictions
from pipeline.serving.predlog import PredictionLog

HISTORY = [f"h{j}" for j in range(10)]  # a sent session history, as a replayed request carries


def _answers(log: PredictionLog, n: int, offset: int, times: list[float]) -> None:
    items = [f"i{j}" for j in range(10)]
    scores = [1.0 - j / 10 for j in range(10)]
    ts = datetime(2026, 11, 5, 12, tzinfo=timezone.utc)
    for i in range(n):
        start = time.perf_counter()
        log.record(
            request_id=f"r{offset + i}",
            ts=ts,
            model_version="1",
            role="champion",
            user_id=f"u{i % 5000}",
            items=items,
            scores=scores,
            source="model",
            history=HISTORY,
        )
        times.append(time.perf_counter() - start)


def paced(log: PredictionLog, rate: float, seconds: float) -> list[float]:
    """``record`` at ``rate`` answers a second from one thread (a service's event loop), for ``seconds``."""
    times: list[float] = []
    items, scores = [f"i{j}" for j in range(10)], [1.0 - j / 10 for j in range(10)]
    ts = datetime(2026, 11, 5, 13, tzinfo=timezone.utc)
    start, i = time.perf_counter(), 0
    while (now := time.perf_counter()) - start < seconds:
        due = start + i / rate
        if now < due:
            time.sleep(due - now)
        t0 = time.perf_counter()
        log.record(
            request_id=f"p{i}",
            ts=ts,
            model_version="1",
            role="champion",
            user_id=f"u{i % 5000}",
            items=items,
            scores=scores,
            source="model",
            history=HISTORY,
        )
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2000.0, help="answers/s of the paced run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the paced run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = PredictionLog(tmp, "next_item", capacity=args.answers, flush_seconds=1.0)
        per_thread = args.answers // args.threads
        times: list[list[float]] = [[] for _ in range(args.threads)]
        started = time.perf_counter()
        workers = [
            threading.Thread(target=_answers, args=(log, per_thread, t * per_thread, times[t]))
            for t in range(args.threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        recorded = time.perf_counter() - started
        log.close(timeout=120)
        written = time.perf_counter() - started
        back = read_predictions(tmp, "next_item", "2026-11-05").height
        flat = sorted(t for part in times for t in part)
        p = lambda q, values=flat: values[min(len(values) - 1, int(q * len(values)))] * 1e6  # noqa: E731
        print(
            f"record() in a tight loop, {len(flat):,} answers from {args.threads} threads at once (worst case): "
            f"p50 {p(0.5):.1f} us, "
            f"p99 {p(0.99):.1f} us, max {flat[-1] * 1e6:.0f} us, mean {statistics.fmean(flat) * 1e6:.1f} us"
        )
        print(
            f"written: {log.written:,} answers ({back:,} read back) in {written:.2f} s from the first record "
            f"({log.written / written:,.0f} answers/s; recording alone took {recorded:.2f} s); dropped "
            f"{dict(log.dropped) or 0}"
        )

        steady = PredictionLog(tmp + "/paced", "next_item", flush_seconds=1.0)
        flat = sorted(paced(steady, args.rate, args.seconds))
        steady.close()
        print(
            f"paced: {args.rate:,.0f} answers/s from one thread for {args.seconds:g} s, files every second: "
            f"record() p50 {p(0.5, flat):.1f} us, p99 {p(0.99, flat):.1f} us, p99.9 {p(0.999, flat):.1f} us, "
            f"max {flat[-1] * 1e6:.0f} us; {steady.written:,} written"
        )

        burst = PredictionLog(tmp + "/burst", "next_item", capacity=1_000, flush_seconds=60.0)
        burst.close()  # a sink that never drains: the queue fills, then every answer is dropped
        times = [[]]
        _answers(burst, 10_000, 0, times[0])
        flat = sorted(times[0])
        print(
            f"a full queue (1,000) under a burst of 10,000: {burst.queue.qsize():,} held, dropped "
            f"{dict(burst.dropped)}; record() p99 {flat[int(0.99 * len(flat))] * 1e6:.1f} us, max "
            f"{flat[-1] * 1e6:.0f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
