"""The fraud Bento's latency at checkout: one order per request, closed-loop clients.

A 16-day generated shop (3,000 events a day, 5% of orders fraudulent, chargebacks 1 to 2 days late)
is published and the fraud family retrained on it with a 2-day maturity window (the pipeline's own
steps: train, evaluate, gate, register, package, promote); the champion's Bento is served with its
defaults (``SHOPML_API_WORKERS``, batching on) and the prediction log on, as in production. The
requests are the last days' real orders, sent as a checkout would (time, amount, user, device,
address, country, card; features computed by the service from its snapshot and the orders it
scored since). ``benchmarks.load_client`` runs in its own process at each ``--concurrency``
level for ``--seconds``; before it, the raw ceiling: the service's own scoring call for one order,
in this process, without HTTP.

    python -m benchmarks.bench_fraud_serve [--concurrency 1 8] [--seconds 10] [--json OUT]

It ends with ``fraud /score at <c> clients: <req/s> req/s, p50 <ms>, p99 <ms> ms`` per level. The
issue's target: p99 under 20 ms for one order at 8 clients on the 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def trained_shop(home: Path):
    """A published shop with a fraud champion; its state paths and the last days' orders as bodies."""
    import os

    from pipeline.cli import main as cli
    from pipeline.core.params import GenerateParams, load_params
    from pipeline.core.settings import get_state_paths
    from pipeline.data.generate import generate_shop_data
    from pipeline.data.version import open_dataset
    from pipeline.families.fraud.evaluation import order_body
    from pipeline.families.fraud.orders import orders_of
    from pipeline.lifecycle.steps import retrain

    os.environ["SHOPML_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    shop = GenerateParams(
        seed=5,
        start_date="2026-10-01",
        days=16,
        events_per_day=3000,
        initial_users=1500,
        initial_items=800,
        fraud_rate=0.05,
        chargeback_days=(1.0, 2.0),
    )
    paths = get_state_paths()
    generate_shop_data(shop, paths.landing)
    assert cli(["run", "--start", shop.start_date, "--days", str(shop.days)]) == 0
    params = load_params()
    short = dataclasses.replace(params.train_fraud, maturity_days=2, valid_days=3, test_days=3, min_train_days=4)
    promoted = retrain(paths, dataclasses.replace(params, train_fraud=short), "fraud")
    events = open_dataset(paths, promoted["dataset_version"]).events()
    orders = orders_of(events).sort("order_time").tail(2000)
    # New order ids: the service scores them as new orders, as at checkout.
    bodies = [{"orders": [{**order_body(r), "order_id": f"bench-{i}"}]} for i, r in enumerate(orders.to_dicts())]
    return paths, promoted, bodies


def raw_ceiling(paths, bento_tag: str, bodies: list[dict], n: int = 500) -> dict:
    """The service's scoring of one order (features, model, bands, reasons), without HTTP."""
    import bentoml

    from pipeline.families.fraud.serving import OrderScorer, ScoreRequest
    from pipeline.serving.common import load_pyfunc
    from pipeline.serving.snapshot import FeatureSnapshot

    info = bentoml.get(bento_tag).info.args
    pyfunc = load_pyfunc(info["model_tag"]).unwrap_python_model()
    snapshot = FeatureSnapshot.load(bentoml.models.get(info["snapshot_tag"]).path)
    scorer = OrderScorer(pyfunc, snapshot, "memory")
    requests = [ScoreRequest(**b).orders for b in bodies[:n]]
    times = []
    for orders in requests:
        start = time.perf_counter()
        scorer.score_requests([orders])
        times.append((time.perf_counter() - start) * 1000)
    t = np.asarray(times[20:])
    return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)), "calls": len(t)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from benchmarks.load_client import measure
    from pipeline.serving.package import served

    with tempfile.TemporaryDirectory(prefix="shopml-bench-fraud-serve-") as tmp:
        home = Path(tmp)
        started = time.perf_counter()
        paths, promoted, bodies = trained_shop(home)
        print(
            f"fraud champion v{promoted['version']} ({promoted['bento_tag']}) on a 16-day shop, "
            f"ready in {time.perf_counter() - started:.0f} s; {len(bodies)} orders to send"
        )
        ceiling = raw_ceiling(paths, promoted["bento_tag"], bodies)
        print(f"raw ceiling (one order, no HTTP): p50 {ceiling['p50_ms']:.2f} ms, p99 {ceiling['p99_ms']:.2f} ms")
        body_file = home / "orders.json"
        body_file.write_text(json.dumps(bodies))
        results = []
        with served(paths, promoted["bento_tag"], env={"SHOPML_ACCESS_LOG": "0"}) as url:
            for c in args.concurrency:
                measured = measure(f"{url}/score", body_file, c, args.seconds)
                row = {"clients": c, **measured}
                results.append(row)
                print(
                    f"{c:>4} clients: {row['rps']:8.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                    f"p95 {row['p95_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}"
                )
        for row in results:
            print(
                f"fraud /score at {row['clients']} clients: {row['rps']:.0f} req/s, "
                f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
            )
        if args.json:
            args.json.write_text(json.dumps({"raw": ceiling, "levels": results}, indent=2))


if __name__ == "__main__":
    main()
