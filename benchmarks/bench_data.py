"""Throughput and peak memory of generate, ingest and validate at 1 and 10 million events.

Each stage of each size runs in a child process of its own, so its peak resident memory is its own.
Run with ``make bench-data`` (or ``python -m benchmarks.bench_data --sizes 1000000``). Prints a
table; the target is ingest + validate of 10 million events in under 60 s within 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAY = "2026-11-05"  # a Thursday: the weekly traffic factor is close to 1


def _child(stage: str, home: Path, events: int) -> dict:
    os.environ["SHOPML_HOME"] = str(home)
    from pipeline.core.params import GenerateParams, ValidateParams
    from pipeline.core.settings import get_state_paths
    from pipeline.data.ingest import Interval, ingest_events

    paths = get_state_paths()
    start = time.perf_counter()
    if stage == "generate":
        from pipeline.data.generate import generate_shop_data

        params = GenerateParams(
            seed=1,
            start_date=DAY,
            days=1,
            events_per_day=events,
            initial_users=max(4000, events // 25),
            initial_items=min(50_000, max(3000, events // 200)),
            format="parquet",
        )
        rows = generate_shop_data(params, paths.landing)[0].events
    elif stage == "ingest":
        rows = ingest_events(
            Interval.for_day(DAY),
            "landing/events/events-{date}.parquet",
            paths,
            catalog_source="landing/catalog/catalog-{date}.parquet",
        ).rows_accepted
    else:
        from pipeline.data.validate import validate_batch

        rows = validate_batch(Interval.for_day(DAY), paths, ValidateParams()).events_rows
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"stage": stage, "rows": rows, "seconds": seconds, "peak_bytes": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000000,10000000", help="comma-separated event counts")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "HOME", "EVENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, home, events = args.child
        print(json.dumps(_child(stage, Path(home), int(events))))
        return 0

    print(f"{'events':>11} {'stage':>9} {'rows':>11} {'seconds':>8} {'rows/s':>11} {'peak RSS':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="shopml-bench-") as home:
            totals = 0.0
            for stage in ("generate", "ingest", "validate"):
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_data", "--child", stage, home, str(size)],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if stage != "generate":
                    totals += r["seconds"]
                print(
                    f"{size:>11,} {stage:>9} {r['rows']:>11,} {r['seconds']:>8.1f} "
                    f"{r['rows'] / r['seconds']:>11,.0f} {r['peak_bytes'] / 2**30:>7.2f}GiB",
                    flush=True,
                )
            print(f"{size:>11,} {'ingest+validate':>21} {totals:>8.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
