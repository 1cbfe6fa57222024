"""A load generator, run as its own process by ``bench_serve``: closed-loop clients against one URL.

    python -m benchmarks.load_client --url http://127.0.0.1:3000/recommend --bodies bodies.json \
        --concurrency 64 --seconds 10

Each of ``concurrency`` clients sends the next body as soon as its previous answer came back, for
``seconds`` (after a warm-up second that is not counted). Prints one JSON line: requests, errors,
requests per second, and latency percentiles in milliseconds. aiohttp, not httpx: on 2 cores the
generator's own CPU use is part of what is measured, and aiohttp's is the smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time

import aiohttp
import numpy as np


async def _run(url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    counter = itertools.count()
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop:
                body = bodies[next(counter) % len(bodies)]
                sent = now
                try:
                    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                        await r.read()
                        status = r.status
                except aiohttp.ClientError:
                    status = 0
                done = time.perf_counter()
                if sent >= measure_from and done <= stop:
                    if status == 200:
                        latencies.append((done - sent) * 1000)
                    else:
                        errors += 1
                        statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    ms = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "error_statuses": statuses,
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def measure(url: str, bodies_file, concurrency: int, seconds: float) -> dict:
    """This generator in a process of its own (its CPU apart from the caller's) against ``url``:
    the JSON line it prints, as a dict."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load_client",
            "--url",
            url,
            "--bodies",
            str(bodies_file),
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="a JSON file holding a list of request bodies")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    with open(args.bodies) as fh:
        bodies = [json.dumps(b).encode() for b in json.load(fh)]
    print(json.dumps(asyncio.run(_run(args.url, bodies, args.concurrency, args.seconds, args.warmup))))


if __name__ == "__main__":
    main()
